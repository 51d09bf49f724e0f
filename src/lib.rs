//! sluice: change data capture from DynamoDB Streams (and Kinesis) into Elasticsearch/OpenSearch.
//!
//! Data flows one way — [`source`] → [`transform`] → [`batch`] → [`sink`] — and acknowledgements
//! flow back through [`ack`], the only component that commits [`checkpoint`]s.

pub mod ack;
pub mod app;
pub mod backfill;
pub mod batch;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod data_loss;
pub mod es_client;
pub mod http;
pub mod index_setup;
pub mod lease;
pub mod metrics;
pub mod retry;
pub mod sigv4;
pub mod sink;
pub mod source;
pub mod transform;
pub mod version;
