//! baton-sample
