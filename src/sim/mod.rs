//! Offline simulator (in progress).
