//! Constructor checks in the spec's order. Placeholder: being written.
