//! Real UDP: 1200-byte datagrams on loopback, paced so the receiver keeps up.
//!
//! Pacing is a credit window shared in-process by both sides alike: the sender stays at most
//! [`WINDOW`] datagrams ahead of what the receiver has counted (well under the kernel's default
//! receive buffer and our readable's 64 datagrams), so loss measures bugs, not a flooded buffer. A
//! datagram that never arrives releases its credit after [`CREDIT_WAIT`]. Throughput is datagrams
//! received per second, from the first send to the last receive.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tcpudp::{Datagram, Policy, UdpOptions, UdpSocket};
use tokio::sync::Notify;

use super::tcp::BoxFut;
use super::{warm, BenchResult, Sample, Sizes};

/// Datagrams the sender may be ahead of the receiver.
pub(crate) const WINDOW: u64 = 32;
/// How long the sender waits for credit before counting the outstanding datagrams as lost.
const CREDIT_WAIT: Duration = Duration::from_millis(100);

/// The receiver's count, shared with the sender.
pub(crate) struct Pace {
    start: Instant,
    received: AtomicU64,
    last_nanos: AtomicU64,
    notify: Notify,
}

impl Pace {
    pub(crate) fn new() -> Arc<Pace> {
        Arc::new(Pace {
            start: Instant::now(),
            received: AtomicU64::new(0),
            last_nanos: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }

    /// The receiver got one datagram.
    pub(crate) fn record(&self) {
        self.last_nanos.store(self.start.elapsed().as_nanos() as u64, Relaxed);
        self.received.fetch_add(1, Relaxed);
        self.notify.notify_one();
    }

    /// Waits until the sender, having sent `sent`, may send one more.
    async fn credit(&self, sent: u64, lost: &mut u64) {
        loop {
            let received = self.received.load(Relaxed);
            if sent.saturating_sub(received + *lost) < WINDOW {
                return;
            }
            if tokio::time::timeout(CREDIT_WAIT, self.notify.notified()).await.is_err()
                && self.received.load(Relaxed) == received
            {
                *lost = sent - received;
            }
        }
    }

    /// Waits until `sent` datagrams arrived or none came for [`CREDIT_WAIT`]; the sample.
    async fn finish(&self, sent: u64) -> Sample {
        loop {
            let received = self.received.load(Relaxed);
            if received >= sent {
                break;
            }
            if tokio::time::timeout(CREDIT_WAIT, self.notify.notified()).await.is_err()
                && self.received.load(Relaxed) == received
            {
                break;
            }
        }
        let received = self.received.load(Relaxed);
        let secs = Duration::from_nanos(self.last_nanos.load(Relaxed));
        let mut sample = Sample::new(received, secs);
        sample.loss = Some(1.0 - received as f64 / sent.max(1) as f64);
        sample
    }
}

/// Through `tcpudp`: a receiving socket bound to 127.0.0.1, a sender with that as its default
/// destination; each write's promise awaited.
pub(crate) fn udp_ours(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let count = warm(sizes.udp_datagrams, warmup, 1);
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let rx = UdpSocket::new(
            &net,
            UdpOptions { local_address: Some("127.0.0.1".into()), ..UdpOptions::default() },
        )?;
        rx.opened().await?;
        let port = rx.local_port().ok_or("the receiver reports no port")?;
        let tx = UdpSocket::new(
            &net,
            UdpOptions {
                remote_address: Some("127.0.0.1".into()),
                remote_port: Some(port),
                ..UdpOptions::default()
            },
        )?;
        tx.opened().await?;
        let pace = Pace::new();
        let mut readable = rx.readable()?;
        let receiver = tokio::spawn({
            let pace = pace.clone();
            async move {
                while let Some(_message) = readable.read().await? {
                    pace.record();
                }
                BenchResult::Ok(())
            }
        });
        let sender = tokio::spawn({
            let pace = pace.clone();
            let payload = Bytes::from(vec![0xa5; sizes.datagram]);
            async move {
                let writable = tx.writable()?;
                let mut lost = 0;
                for sent in 0..count {
                    pace.credit(sent, &mut lost).await;
                    writable.write(Datagram::new(payload.clone())).await?;
                }
                BenchResult::Ok(pace.finish(count).await)
            }
        });
        let sample = sender.await.map_err(|e| format!("sender: {e}"))??;
        receiver.abort();
        drop(rx);
        Ok(sample)
    })
}

/// The same with raw tokio sockets: `send_to` and `recv_from`.
pub(crate) fn udp_raw(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let count = warm(sizes.udp_datagrams, warmup, 1);
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let dest = rx.local_addr()?;
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let pace = Pace::new();
        let receiver = tokio::spawn({
            let pace = pace.clone();
            async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    if let Err(e) = rx.recv_from(&mut buf).await {
                        return BenchResult::<()>::Err(e.into());
                    }
                    pace.record();
                }
            }
        });
        let sender = tokio::spawn({
            let pace = pace.clone();
            let payload = vec![0xa5; sizes.datagram];
            async move {
                let mut lost = 0;
                for sent in 0..count {
                    pace.credit(sent, &mut lost).await;
                    tx.send_to(&payload, dest).await?;
                }
                BenchResult::Ok(pace.finish(count).await)
            }
        });
        let sample = sender.await.map_err(|e| format!("sender: {e}"))??;
        receiver.abort();
        Ok(sample)
    })
}
