//! Screenshots: libvirt hands a screen over as a PNG or as a binary PPM, depending on the
//! hypervisor's version (libvirt 9.0 with QEMU 7.2 gives PNG); berth serves PNG. The `image`
//! crate reads the PPM and writes the PNG.

use image::codecs::png::PngEncoder;
use image::codecs::pnm::PnmDecoder;
use image::{DynamicImage, ImageDecoder, ImageError};

/// The first bytes of every PNG file.
pub(super) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why a PPM screenshot could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum PpmError {
    #[error("not a binary ppm (P6) image")]
    NotPpm,
    #[error("bad ppm header: {0}")]
    Header(#[source] ImageError),
    #[error("ppm image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("ppm pixel data is {got} bytes, expected {expected}")]
    Truncated { got: usize, expected: u64 },
    #[error("bad ppm pixel data: {0}")]
    Pixels(#[source] ImageError),
    #[error("encoding png: {0}")]
    Png(#[source] ImageError),
}

/// Converts a binary PPM (`P6`, what QEMU's screendump writes) into an 8-bit RGB PNG.
pub fn ppm_to_png(ppm: &[u8]) -> Result<Vec<u8>, PpmError> {
    // The decoder would take any PNM (greymaps, bitmaps, PAM), but QEMU writes P6: anything
    // else means libvirt sent what berth does not expect.
    if !ppm.starts_with(b"P6") {
        return Err(PpmError::NotPpm);
    }
    // The header alone first: it says how many bytes of pixels must follow, so a cut-off image
    // is refused, with both sizes, before anything is allocated for the size its header claims.
    let header_only = PnmDecoder::new(ppm).map_err(PpmError::Header)?;
    let expected = header_only.total_bytes();
    let (pixels, header) = header_only.into_inner();
    let (width, height) = (header.width(), header.height());
    if width == 0 || height == 0 {
        return Err(PpmError::Empty { width, height });
    }
    if (pixels.len() as u64) < expected {
        return Err(PpmError::Truncated {
            got: pixels.len(),
            expected,
        });
    }
    let decoder = PnmDecoder::new(ppm).map_err(PpmError::Header)?;
    // A maxval above 255 gives 16-bit samples; a screen needs no more than 8.
    let rgb = DynamicImage::from_decoder(decoder)
        .map_err(PpmError::Pixels)?
        .into_rgb8();
    let mut png = Vec::new();
    rgb.write_with_encoder(PngEncoder::new(&mut png))
        .map_err(PpmError::Png)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG back into its size and 8-bit RGB pixels.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert!(png.starts_with(PNG_SIGNATURE));
        let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .expect("a png that decodes");
        assert_eq!(image.color(), image::ColorType::Rgb8);
        (image.width(), image.height(), image.into_rgb8().into_raw())
    }

    #[test]
    fn ppm_converts_to_png() {
        let mut ppm = b"P6\n# made by hand\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let png = ppm_to_png(&ppm).expect("converts");
        assert_eq!(decode(&png), (2, 1, vec![255, 0, 0, 0, 0, 255]));
    }

    #[test]
    fn samples_are_scaled_to_eight_bits() {
        // maxval 15: 15 is full, 0 is none.
        let mut ppm = b"P6 1 2 15\n".to_vec();
        ppm.extend_from_slice(&[15, 0, 15, 0, 15, 0]);
        assert_eq!(
            decode(&ppm_to_png(&ppm).expect("converts")),
            (1, 2, vec![255, 0, 255, 0, 255, 0])
        );
        // maxval 65535: two bytes a sample, big-endian.
        let mut ppm = b"P6 1 1 65535\n".to_vec();
        ppm.extend_from_slice(&[0xff, 0xff, 0, 0, 0x80, 0x00]);
        let (w, h, rgb) = decode(&ppm_to_png(&ppm).expect("converts"));
        assert_eq!((w, h, rgb[0], rgb[1]), (1, 1, 255, 0));
        assert!((127..=128).contains(&rgb[2]), "{rgb:?}");
    }

    #[test]
    fn bad_ppm_is_an_error_value() {
        assert!(matches!(ppm_to_png(b"GIF89a"), Err(PpmError::NotPpm)));
        assert!(matches!(ppm_to_png(b""), Err(PpmError::NotPpm)));
        // A greymap is a PNM, but not what QEMU sends.
        assert!(matches!(
            ppm_to_png(b"P5 1 1 255\n\x00"),
            Err(PpmError::NotPpm)
        ));
        assert!(matches!(
            ppm_to_png(b"P6 2 2 255\n\x00\x00"),
            Err(PpmError::Truncated {
                got: 2,
                expected: 12
            })
        ));
        for header in [
            &b"P6 x"[..],
            b"P6",
            b"P6 2 2",
            b"P6 2 2 0\n",
            b"P6 2 2 70000\n",
            b"P6 -2 2 255\n",
            b"P6 99999999999 1 255\n",
            b"P6 2 \xff 255\n",
        ] {
            let got = ppm_to_png(header);
            assert!(
                matches!(got, Err(PpmError::Header(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(matches!(
            ppm_to_png(b"P6 0 3 255\n"),
            Err(PpmError::Empty {
                width: 0,
                height: 3
            })
        ));
        // A header that claims a huge screen over a few bytes is refused before anything is
        // allocated for it.
        assert!(matches!(
            ppm_to_png(b"P6 65535 65535 255\n\x00\x00\x00"),
            Err(PpmError::Truncated {
                got: 3,
                expected: 12_884_508_675
            })
        ));
        let message = ppm_to_png(b"P6 2 2 255\n\x00\x00")
            .expect_err("truncated")
            .to_string();
        assert_eq!(message, "ppm pixel data is 2 bytes, expected 12");
    }

    #[test]
    fn every_cut_of_a_good_ppm_is_an_error_not_a_panic() {
        let mut ppm = b"P6\n# comment\n3 2\n255\n".to_vec();
        ppm.extend((0..18u8).map(|v| v * 14));
        assert!(ppm_to_png(&ppm).is_ok());
        for len in 0..ppm.len() {
            assert!(ppm_to_png(&ppm[..len]).is_err(), "first {len} bytes");
        }
        // Every byte of the header replaced by a few others: converts or says why.
        let header_len = ppm.len() - 18;
        for i in 0..header_len {
            for b in [b'0', b'9', b' ', b'#', b'\n', 0, 0xff] {
                let mut bad = ppm.clone();
                bad[i] = b;
                let _ = ppm_to_png(&bad);
            }
        }
    }
}
