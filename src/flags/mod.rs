//! Flag groups and value parsers shared by the subcommands, so the core's plain types carry
//! no command-line derives: each group converts into its core type (`PolicyArgs` into
//! `PolicyConfig`, ...).

pub use cache_router_bus::duration;
pub mod policy;
pub mod specs;
pub mod timing;
pub mod workload;

pub use policy::{policy_kind, PolicyArgs};
pub use specs::{ExtraModel, StaticWorker};
pub use timing::TimingArgs;
pub use workload::GeneratorArgs;
