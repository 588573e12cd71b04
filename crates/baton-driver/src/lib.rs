//! baton-driver
