//! baton-store
