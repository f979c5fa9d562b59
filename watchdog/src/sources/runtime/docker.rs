//! The relist's calls to Docker (bollard, unix socket).
use std::{future::Future, time::Duration};

use bollard::{
    ClientVersion, Docker,
    query_parameters::{InspectContainerOptions, ListContainersOptions},
};

use super::{Container, ObjectKind, RuntimeClient, Stage, pod_from_labels};

/// API version spoken before negotiation (Docker 20.10 to 28 accept it).
const FALLBACK_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// A Docker Engine API client.
#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    host: String,
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
            .map(|docker| Self {
                docker,
                host: host.to_owned(),
            })
            .map_err(|e| e.to_string())
    }
}

impl RuntimeClient for DockerClient {
    fn runtime(&self) -> &str {
        "docker"
    }

    fn endpoint(&self) -> &str {
        &self.host
    }

    fn list_ops(&self) -> &'static [&'static str] {
        &["ContainerList"]
    }

    fn inspect_op(&self, _: ObjectKind) -> &'static str {
        "ContainerInspect"
    }

    fn changed_only(&self) -> bool {
        false
    }

    async fn version(&mut self) -> Result<(), String> {
        self.docker = self
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn list(
        &self,
        _: Stage,
    ) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static {
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
                    let labels = c.labels.unwrap_or_default();
                    let pod = pod_from_labels(|k| labels.get(k).map(String::as_str));
                    c.id.map(|id| Container {
                        id,
                        name: labels
                            .get("io.kubernetes.container.name")
                            .cloned()
                            .unwrap_or(name),
                        kind: ObjectKind::Container,
                        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                        group: labels.get("io.kubernetes.sandbox.id").cloned(),
                        pod,
                    })
                })
                .collect())
        }
    }

    fn inspect(
        &self,
        obj: &Container,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let d = self.docker.clone();
        let id = obj.id.clone();
        async move {
            d.inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}
