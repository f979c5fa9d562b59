//! The relist's calls to Docker (bollard, unix socket).
use std::{future::Future, time::Duration};

use bollard::{
    ClientVersion, Docker,
    query_parameters::{InspectContainerOptions, ListContainersOptions},
};

use super::{Container, RuntimeClient};

/// API version spoken before negotiation (Docker 20.10 to 28 accept it).
const FALLBACK_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// A Docker Engine API client.
#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
}

impl DockerClient {
    /// Connects (no request yet): Err when the socket path is wrong. `timeout`
    /// is bollard's own, on every request (the relist's are shorter).
    pub fn connect(host: &str, timeout: Duration) -> Result<Self, String> {
        let Some(path) = host.strip_prefix("unix://") else {
            return Err(format!(
                "docker host {host:?}: only unix:// sockets are supported (a TCP host name would be resolved on the blocking pool)"
            ));
        };
        Docker::connect_with_unix(path, timeout.as_secs().max(1), &FALLBACK_API)
            .map(|docker| Self { docker })
            .map_err(|e| e.to_string())
    }
}

impl RuntimeClient for DockerClient {
    const RUNTIME: &'static str = "docker";

    async fn version(&mut self) -> Result<(), String> {
        self.docker = self
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn list(&self) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static {
        let d = self.docker.clone();
        async move {
            let opts = ListContainersOptions {
                all: true,
                ..Default::default()
            };
            let cs = d
                .list_containers(Some(opts))
                .await
                .map_err(|e| e.to_string())?;
            Ok(cs
                .into_iter()
                .filter_map(|c| {
                    let name = c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned();
                    c.id.map(|id| Container { id, name })
                })
                .collect())
        }
    }

    fn inspect(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let d = self.docker.clone();
        let id = id.to_owned();
        async move {
            d.inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}
