//! Plots draw text with an embedded font: a Latin subset of DejaVu Sans (45 KB, its license
//! beside it; `scripts/subset-font.sh` regenerates it) through plotters' pure-Rust `ab_glyph`
//! path. So neither the build nor a container image needs fontconfig, freetype or a system
//! font, and a plot looks the same on every machine.

use std::sync::Once;

use plotters::style::{register_font, FontStyle};

static DEJAVU_SANS: &[u8] = include_bytes!("DejaVuSans-subset.ttf");

/// The font family every plot uses.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font as [`FAMILY`]; call before drawing (idempotent, cheap).
pub fn register_embedded_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS).is_err() {
            tracing::warn!("the embedded font did not load: plots will have no text");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    #[test]
    fn text_renders_with_the_embedded_font() {
        register_embedded_font();
        let (w, h) = (200u32, 60u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.draw(&Text::new(
                "TTFT p99 µs ≥",
                (5, 15),
                (FAMILY, 24).into_font(),
            ))
            .unwrap();
            root.present().unwrap();
        }
        let inked = buf.iter().filter(|&&b| b < 128).count();
        assert!(inked > 100, "the text left {inked} dark bytes");
    }
}
