//! One module per command of the binary.

pub(crate) mod apikey;
pub(crate) mod check;
pub(crate) mod connectors;
pub(crate) mod dev;
pub(crate) mod dlq;
pub(crate) mod load;
pub(crate) mod migrate;
pub(crate) mod slot;
pub(crate) mod validate;
