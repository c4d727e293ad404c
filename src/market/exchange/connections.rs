//! The run's shared exchange connections: one client (and one weight limiter) per source, and
//! for replay sources the in-process replay exchange, started on first use and stopped when the
//! run ends. Stages that name the same source share its budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::client::{ExchangeClient, ExchangeError};
use super::source::{Endpoint, Source, SourceKind};
use crate::market::model::ExchangeInfo;
use crate::market::replay::ReplayExchange;

/// The share of the declared weight limit a client uses before `rate_limits` says otherwise.
pub const DEFAULT_SHARE: f64 = 0.5;

/// A connected source.
#[derive(Debug)]
pub struct Connection {
    pub client: ExchangeClient,
    /// `exchangeInfo` as read when connecting.
    pub info: ExchangeInfo,
    /// Keeps an in-process replay exchange alive as long as the connection.
    pub replay: Option<ReplayExchange>,
}

#[derive(Debug, Default)]
pub struct Connections {
    cells: Mutex<HashMap<String, Arc<OnceCell<Arc<Connection>>>>>,
}

impl Connections {
    /// The source's connection, made on first use.
    pub async fn connect(
        &self,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Result<Arc<Connection>, ExchangeError> {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(cells.entry(source.name.clone()).or_default())
        };
        cell.get_or_try_init(|| open(source, cancel))
            .await
            .map(Arc::clone)
    }
}

async fn open(
    source: &Source,
    cancel: &CancellationToken,
) -> Result<Arc<Connection>, ExchangeError> {
    let SourceKind::Exchange {
        endpoint,
        path_prefix,
        timeout,
        max_retries,
    } = &source.kind
    else {
        return Err(ExchangeError::Setup {
            name: source.name.clone(),
            message: "this source is a dump directory, not an exchange API".into(),
        });
    };
    let (base_url, replay) = match endpoint {
        Endpoint::Url(url) => (url.clone(), None),
        Endpoint::Replay { scenario, file } => {
            let replay = ReplayExchange::start(Arc::clone(scenario), ([127, 0, 0, 1], 0).into())
                .await
                .map_err(|message| ExchangeError::Setup {
                    name: source.name.clone(),
                    message: format!(
                        "cannot start the replay exchange for {}: {message}",
                        file.display()
                    ),
                })?;
            (replay.url.clone(), Some(replay))
        }
    };
    let client = ExchangeClient::new(&base_url, path_prefix, *timeout, *max_retries)?;
    let info = client.connect(DEFAULT_SHARE, cancel).await?;
    Ok(Arc::new(Connection {
        client,
        info,
        replay,
    }))
}
