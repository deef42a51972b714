//! Value parsers for the structured flags `--worker ID=URL[,model=NAME]` and
//! `--extra-model NAME=DIR`, so clap reports a malformed one like any other bad value.

use std::path::PathBuf;

use cache_router_core::protocol::WorkerId;

/// A statically configured worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticWorker {
    pub id: WorkerId,
    /// `http://host:port`, without a trailing `/`.
    pub url: String,
    /// The model it serves; None serves `--model`.
    pub model: Option<String>,
}

/// Parses `ID=URL` or `ID=URL,model=NAME`.
pub fn static_worker(s: &str) -> Result<StaticWorker, String> {
    let (id, rest) = s
        .split_once('=')
        .ok_or_else(|| "expected ID=URL[,model=NAME]".to_owned())?;
    let (url, model) = match rest.split_once(",model=") {
        Some((url, model)) if !model.is_empty() => (url, Some(model.to_owned())),
        Some(_) => return Err("empty model name".into()),
        None => (rest, None),
    };
    let id = WorkerId(id.to_owned());
    id.validate().map_err(|e| e.to_string())?;
    let url = crate::worker_url::validate(url).map_err(|e| e.to_string())?;
    Ok(StaticWorker { id, url, model })
}

/// Another served model with its own tokenizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraModel {
    pub name: String,
    /// A model directory (tokenizer.json, tokenizer_config.json).
    pub dir: PathBuf,
}

/// Parses `NAME=DIR`.
pub fn extra_model(s: &str) -> Result<ExtraModel, String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok(ExtraModel {
            name: name.to_owned(),
            dir: PathBuf::from(dir),
        }),
        _ => Err("expected NAME=DIR".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_with_optional_model() {
        let w = static_worker("a=http://127.0.0.1:1/").unwrap();
        assert_eq!(
            (w.id.0.as_str(), w.url.as_str(), w.model),
            ("a", "http://127.0.0.1:1", None)
        );
        let w = static_worker("b=http://h:2,model=qwen").unwrap();
        assert_eq!(w.model.as_deref(), Some("qwen"));
        for bad in [
            "nourl",
            "a.b=http://x",
            "a=ftp://x",
            "a=https://x",
            "a=http://x,model=",
            "a=http://x:1/v1",
        ] {
            assert!(static_worker(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_models() {
        assert_eq!(
            extra_model("m=/models/m"),
            Ok(ExtraModel {
                name: "m".into(),
                dir: "/models/m".into()
            })
        );
        for bad in ["m", "=d", "m="] {
            assert!(extra_model(bad).is_err(), "{bad}");
        }
    }
}
