"""An echo peer the library did not write: accepts one TCP connection on 127.0.0.1, echoes
everything until end of stream, then sends FIN and waits for the client's close.

Binds port 0 and prints the port on stdout (one line), as the tests' external peers must.
Every wait is bounded (30 s), so a failing test never leaves this process behind for long.
"""
import socket
import sys

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(1)
listener.settimeout(30)
print(listener.getsockname()[1], flush=True)

conn, _ = listener.accept()
conn.settimeout(30)
total = 0
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
    total += len(data)
conn.shutdown(socket.SHUT_WR)
# Wait for the client's close (or reset) so the FIN exchange finishes.
try:
    while conn.recv(65536):
        pass
except OSError:
    pass
conn.close()
listener.close()
print(total, flush=True)
sys.exit(0)
