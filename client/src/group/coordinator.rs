//! Routing of a group's requests to its coordinator shard.
//!
//! Any broker port answers group requests (the broker forwards to the
//! coordinator shard), but sending straight to the coordinator saves a hop.
//! The coordinator's endpoint comes from FindCoordinator and is cached;
//! after an error that says it moved or is unreachable (`NotCoordinator`,
//! I/O, ...) it is forgotten and looked up again on next use. When the
//! lookup itself fails, requests go to any connection.
//!
//! The cache lock is never held across network I/O: the heartbeat thread
//! and the poll thread both route through here.

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use ringmq_wire::envelope::{RequestBody, ResponseBody, ShardEndpoint};

use crate::connection::{Connection, ReplyResult, ResponseFuture};
use crate::error::{ClientError, Result};
use crate::Client;

pub(crate) struct Coordinator {
    client: Client,
    group: String,
    /// `host:port` of the coordinator shard, once known.
    endpoint: Mutex<Option<String>>,
}

impl Coordinator {
    pub(crate) fn new(client: Client, group: String) -> Coordinator {
        Coordinator {
            client,
            group,
            endpoint: Mutex::new(None),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Option<String>> {
        self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to the coordinator (or, failing the lookup, to any
    /// broker port, which forwards).
    pub(crate) fn connection(&self) -> Result<Connection> {
        let cached = self.cache().clone();
        if let Some(endpoint) = cached {
            match self.client.cluster().connection(&endpoint) {
                Ok(connection) => return Ok(connection),
                Err(e) => {
                    tracing::debug!(group = %self.group, endpoint, error = %e, "coordinator unreachable; looking it up again");
                    self.invalidate();
                }
            }
        }
        match self.find() {
            Ok(endpoint) => {
                let connection = self.client.cluster().connection(&endpoint)?;
                *self.cache() = Some(endpoint);
                Ok(connection)
            }
            Err(e) => {
                tracing::debug!(group = %self.group, error = %e, "FindCoordinator failed; sending to any broker port");
                self.client.cluster().any_connection()
            }
        }
    }

    fn find(&self) -> Result<String> {
        let found = self.client.admin().find_coordinator(&self.group)?;
        Ok(self.client.cluster().endpoint_of(&ShardEndpoint {
            shard: found.shard,
            host: found.host,
            port: found.port,
        }))
    }

    /// Forgets the cached coordinator.
    pub(crate) fn invalidate(&self) {
        *self.cache() = None;
    }

    /// Forgets the coordinator after an error that may mean it moved or is
    /// unreachable (every retriable error does).
    pub(crate) fn note_error(&self, error: &ClientError) {
        if error.is_retriable() {
            self.invalidate();
        }
    }

    /// Sends `body` and blocks for the answer's body, retrying retriable
    /// failures (only for requests that are safe to repeat).
    pub(crate) fn call(&self, what: &str, body: RequestBody) -> Result<ResponseBody> {
        self.client.cluster().retrying(what, || {
            let result = self.connection()?.call(body.clone(), Vec::<Bytes>::new());
            if let Err(e) = &result {
                self.note_error(e);
            }
            result.map(|(response, _)| response.body)
        })
    }

    /// Sends `body` once, without waiting for the answer.
    pub(crate) fn request(&self, body: RequestBody) -> Result<ResponseFuture> {
        self.connection()?.request(body, Vec::new())
    }

    /// Sends `body` once; `callback` runs with the outcome on the
    /// connection's reader thread (or here, when it cannot be sent).
    pub(crate) fn request_with_callback(
        &self,
        body: RequestBody,
        callback: impl FnOnce(ReplyResult) + Send + 'static,
    ) {
        match self.connection() {
            Ok(connection) => connection.request_with_callback(body, Vec::new(), callback),
            Err(e) => callback(Err(e)),
        }
    }
}
