//! baton-spec
