//! Where the real tokenizer fixture lives (shared by tests and, via `#[path]`, benches).

use std::path::PathBuf;

/// The DeepSeek tokenizer directory: `$CACHE_ROUTER_TOKENIZER_DIR`, else
/// `${CARGO_TARGET_DIR:-target}/fixtures/deepseek` (where scripts/fetch-tokenizer.sh puts it).
/// Panics with instructions when `tokenizer.json` is not there.
pub(crate) fn deepseek_dir() -> PathBuf {
    let dir = match std::env::var_os("CACHE_ROUTER_TOKENIZER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| manifest.join("target"), |t| manifest.join(t));
            target.join("fixtures/deepseek")
        }
    };
    assert!(
        dir.join("tokenizer.json").is_file(),
        "the DeepSeek tokenizer fixture is missing at {}: run scripts/setup.sh (or \
         scripts/fetch-tokenizer.sh), or set CACHE_ROUTER_TOKENIZER_DIR",
        dir.display()
    );
    dir
}
