//! The integration tests, one binary (DataFusion is linked once): each module drives the real
//! `asterflow` binary or the library against real servers on 127.0.0.1 and real files.

mod architecture;
mod backtest;
mod bad_ticks;
mod cluster;
mod common;
mod errors;
mod exchange;
mod gpu;
mod honest;
mod perp;
mod remote;
pub(crate) mod report;
mod run;
mod s3;
mod scheduled;
mod serve;
mod sql;
mod sweep;
mod train;
mod validate;
