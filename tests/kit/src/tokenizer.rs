//! Where the real tokenizer fixture lives, and routers' model tables built from it.

use std::path::PathBuf;

/// The DeepSeek tokenizer directory: `$CACHE_ROUTER_TOKENIZER_DIR`, else
/// `${CARGO_TARGET_DIR:-target}/fixtures/deepseek` (where scripts/fetch-tokenizer.sh puts it).
/// Panics with instructions when `tokenizer.json` is not there.
pub fn deepseek_dir() -> PathBuf {
    let dir = match std::env::var_os("CACHE_ROUTER_TOKENIZER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = crate::workspace_root();
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

/// The tokenizer file of [`deepseek_dir`].
pub fn tokenizer_file() -> PathBuf {
    deepseek_dir().join("tokenizer.json")
}

/// The real tokenizer loaded as model `name` with `block_size`-token blocks.
pub fn model_tokenizer(name: &str, block_size: usize) -> cache_router::tokenize::ModelTokenizer {
    cache_router::tokenize::ModelTokenizer::from_model_dir(&deepseek_dir(), None)
        .expect("the tokenizer fixture loads")
        .with_model(name, block_size)
}

/// A router's model table serving `name` with the real tokenizer.
pub fn models(name: &str, block_size: usize) -> cache_router::tokenize::Models {
    let mut m = cache_router::tokenize::Models::new();
    m.insert(
        name.to_owned(),
        std::sync::Arc::new(model_tokenizer(name, block_size)),
    );
    m
}
