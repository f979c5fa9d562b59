//! The relist's calls to a CRI runtime (containerd, CRI-O, cri-dockerd):
//! CRI v1 over gRPC (tonic, the bindings of `k8s-cri`) on the runtime's unix
//! socket, the calls kubelet's generic PLEG makes. Never `GetContainerEvents`:
//! on containerd before 1.7.x and on CRI-O a second subscriber steals events
//! from kubelet.
use std::{future::Future, sync::atomic::Ordering};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxState, PodSandboxStatusRequest, VersionRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Container, ObjectKind, RuntimeClient, Stage, pod_from_labels};
use crate::model::kubelet::PodName;

/// kubelet's limit for a CRI answer (a node with many containers lists more
/// than gRPC's default 4 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// A CRI v1 runtime service client on a unix socket.
#[derive(Clone)]
pub struct CriClient {
    client: RuntimeServiceClient<Channel>,
    endpoint: String,
    /// `runtime_name` from `Version` (`containerd`, `cri-o`).
    runtime: String,
}

impl CriClient {
    /// A client for `unix://PATH` (or a bare absolute path). No connection
    /// yet: the first call connects, and a broken connection is made again
    /// by the next call.
    pub fn connect(endpoint: &str) -> Result<Self, String> {
        let path = match endpoint.strip_prefix("unix://") {
            Some(p) => p,
            None if endpoint.starts_with('/') => endpoint,
            None => {
                return Err(format!(
                    "runtime endpoint {endpoint:?}: only unix:// sockets are supported"
                ));
            }
        }
        .to_owned();
        if path.is_empty() {
            return Err(format!("runtime endpoint {endpoint:?}: no socket path"));
        }
        // The URI is not used: the connector below dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }),
        );
        let client = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self {
            client,
            endpoint: endpoint.to_owned(),
            runtime: guess_runtime(endpoint).into(),
        })
    }
}

/// The runtime's name by its usual socket, until `Version` answers.
fn guess_runtime(endpoint: &str) -> &'static str {
    if endpoint.contains("cri-dockerd") {
        "cri-dockerd"
    } else if endpoint.contains("containerd") {
        "containerd"
    } else if endpoint.contains("crio") {
        "cri-o"
    } else {
        "cri"
    }
}

fn status_text(s: tonic::Status) -> String {
    let msg = s.message();
    if msg.is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {msg}", s.code())
    }
}

impl RuntimeClient for CriClient {
    fn runtime(&self) -> &str {
        &self.runtime
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn list_ops(&self) -> &'static [&'static str] {
        &["ListPodSandbox", "ListContainers"]
    }

    fn inspect_op(&self, kind: ObjectKind) -> &'static str {
        match kind {
            ObjectKind::Sandbox => "PodSandboxStatus",
            ObjectKind::Container => "ContainerStatus",
        }
    }

    fn changed_only(&self) -> bool {
        true
    }

    async fn version(&mut self) -> Result<(), String> {
        let v = self
            .client
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|s| format!("Version: {}", status_text(s)))?
            .into_inner();
        if !v.runtime_name.is_empty() {
            self.runtime = v.runtime_name;
        }
        Ok(())
    }

    fn list(
        &self,
        stage: Stage,
    ) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static {
        let mut client = self.client.clone();
        async move {
            stage.store(0, Ordering::Relaxed);
            let sandboxes = client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map_err(status_text)?
                .into_inner()
                .items;
            stage.store(1, Ordering::Relaxed);
            let containers = client
                .list_containers(ListContainersRequest { filter: None })
                .await
                .map_err(status_text)?
                .into_inner()
                .containers;
            let mut out = Vec::with_capacity(sandboxes.len() + containers.len());
            // A container without kubelet's labels is named by its sandbox.
            let mut pods: std::collections::HashMap<String, PodName> = Default::default();
            for s in sandboxes {
                let md = s.metadata.unwrap_or_default();
                let pod = (!md.name.is_empty()).then(|| PodName {
                    namespace: md.namespace,
                    name: md.name.clone(),
                    uid: md.uid,
                });
                if let Some(p) = &pod {
                    pods.insert(s.id.clone(), p.clone());
                }
                out.push(Container {
                    name: md.name,
                    kind: ObjectKind::Sandbox,
                    state: PodSandboxState::try_from(s.state)
                        .map(|st| st.as_str_name().to_owned())
                        .unwrap_or_else(|_| s.state.to_string()),
                    group: Some(s.id.clone()),
                    id: s.id,
                    pod,
                });
            }
            for c in containers {
                let pod = pod_from_labels(|k| c.labels.get(k).map(String::as_str))
                    .or_else(|| pods.get(&c.pod_sandbox_id).cloned());
                let name = c
                    .metadata
                    .map(|m| m.name)
                    .filter(|n| !n.is_empty())
                    .or_else(|| c.labels.get("io.kubernetes.container.name").cloned())
                    .unwrap_or_default();
                out.push(Container {
                    name,
                    kind: ObjectKind::Container,
                    state: ContainerState::try_from(c.state)
                        .map(|st| st.as_str_name().to_owned())
                        .unwrap_or_else(|_| c.state.to_string()),
                    group: (!c.pod_sandbox_id.is_empty()).then_some(c.pod_sandbox_id),
                    id: c.id,
                    pod,
                });
            }
            Ok(out)
        }
    }

    fn inspect(
        &self,
        obj: &Container,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let mut client = self.client.clone();
        let id = obj.id.clone();
        let kind = obj.kind;
        async move {
            match kind {
                ObjectKind::Sandbox => client
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id,
                        verbose: false,
                    })
                    .await
                    .map(|_| ()),
                ObjectKind::Container => client
                    .container_status(ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await
                    .map(|_| ()),
            }
            .map_err(status_text)
        }
    }
}
