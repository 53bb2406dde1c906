//! peerkeep-tests: the harness for tests that start real processes.
//!
//! Every fixture here starts a real program (etcd, haproxy, litecoind, devnode, the project's
//! binaries) on free loopback ports inside a temporary directory, and kills it when dropped —
//! also when the test panics. As a last line of defence against a test process that is killed
//! outright, children are started with `PR_SET_PDEATHSIG` so the kernel kills them when the test
//! thread that started them exits.
//!
//! - [`etcd`]: a single-member etcd that can be stopped, restarted, paused and resumed.
//! - [`proxy`]: a TCP proxy that can cut one client off from a server.
//! - [`wait`]: `eventually(deadline, condition)` instead of sleeps.
//! - [`imds`]: a fake EC2 metadata service.
//! - [`haproxy`]: `lb-config-gen run` with its HAProxy, and HTTP backends to balance.
//! - [`proc`]: free ports, spawning with a death signal, binary paths.
//! - [`devnode`]: the reference P2P daemon (bin `devnode`) and [`DevNode`] to run it.
//! - [`litecoind`]: real `litecoind -regtest` nodes with a small RPC client.
//! - [`fleet`]: agents supervising devnodes, as production runs them.
//! - [`docker`]: compose projects of the real images, a load generator, a registry watch.
//! - [`fakes`]: fake node APIs (Wavelet, nodeos, geth, CometBFT) for adapter contract tests.

pub mod devnode;
pub mod docker;
pub mod etcd;
pub mod fakes;
pub mod fleet;
pub mod haproxy;
pub mod imds;
pub mod litecoind;
pub mod proc;
pub mod proxy;
pub mod wait;

pub use devnode::DevNode;
pub use etcd::Etcd;
pub use proxy::TcpProxy;
pub use wait::{eventually, eventually_async};
