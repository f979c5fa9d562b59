//! watchdog: finds, from kernel evidence, why a Kubernetes node's PLEG goes
//! unhealthy. The layout follows the data:
//!
//! - [`probes`]: load and attach the eBPF programs (`watchdog-ebpf`)
//! - [`ringbuf`]: drain the ring buffer, decode, count drops
//! - [`context`]: the one /proc, /sys and cgroupfs reader (never a user
//!   mount) and the node context that turns events into observations
//! - [`model`]: the data every stage exchanges (observations, findings, the
//!   engine settings: the recording schema), importing nothing with I/O
//! - [`diagnosis`]: the pure engine (no clock, no I/O): observations ->
//!   findings, one detector per cause, one lifecycle for all of them
//! - [`recording`]: `--record` files of engine inputs, read back by `watchdog replay`
//! - [`replay`]: `watchdog replay`, a recording (or a bundle's) diagnosed offline
//! - [`bundle`]: `watchdog bundle`, the kernel evidence of a session in one tar.gz
//! - [`sinks`]: terminal, JSON lines, Prometheus metrics, Kubernetes
//! - [`sources`]: kubelet metrics/log/node condition and the agent's own
//!   relist of the container runtime (PLEG signals), each supervised
//! - [`remediation`]: the pure policy (findings -> steps) and the executors
//!   that act on the node, dry-run by default
//! - [`storage`]: the storage-hang sweep over the probes' maps (blocked tasks)
//! - [`dbus`]: D-Bus/systemd socket calls of runtime processes, their queues
//!   (sock_diag) and the agent's own probes of the bus and systemd
//! - [`agent`]: the live session wiring all of the above
//! - [`config`]: `watchdog run --config FILE`, validated at start
//! - [`cli`]: the `watchdog` command
pub mod agent;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod context;
pub mod dbus;
pub mod diagnosis;
pub mod model;
pub mod paths;
pub mod probes;
pub mod recording;
pub mod remediation;
pub mod replay;
pub mod ringbuf;
pub mod sinks;
pub mod sources;
pub mod storage;
