//! Screenshots: libvirt hands QEMU's screen over as a PPM, berth serves PNG.

/// The first bytes of every PNG file.
pub(super) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why a PPM screenshot could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum PpmError {
    #[error("not a binary ppm (P6) image")]
    NotPpm,
    #[error("bad ppm header: {0}")]
    Header(&'static str),
    #[error("ppm pixel data is {got} bytes, expected {expected}")]
    Truncated { got: usize, expected: usize },
    #[error("encoding png: {0}")]
    Png(#[from] png::EncodingError),
}

/// Converts a binary PPM (`P6`, what QEMU's screendump writes) into a PNG.
pub fn ppm_to_png(ppm: &[u8]) -> Result<Vec<u8>, PpmError> {
    let rest = ppm.strip_prefix(b"P6").ok_or(PpmError::NotPpm)?;
    let mut pos = 0;
    let mut fields = [0usize; 3];
    for field in &mut fields {
        // Whitespace and `#` comments may separate the header fields.
        loop {
            match rest.get(pos) {
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(b'#') => {
                    while rest.get(pos).is_some_and(|b| *b != b'\n') {
                        pos += 1;
                    }
                }
                _ => break,
            }
        }
        let start = pos;
        while rest.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let digits =
            std::str::from_utf8(&rest[start..pos]).map_err(|_| PpmError::Header("not ascii"))?;
        *field = digits
            .parse()
            .map_err(|_| PpmError::Header("missing number"))?;
    }
    let [width, height, maxval] = fields;
    if !rest.get(pos).is_some_and(u8::is_ascii_whitespace) {
        return Err(PpmError::Header("no whitespace after maxval"));
    }
    pos += 1;
    if width == 0 || height == 0 || maxval == 0 || maxval > 65535 {
        return Err(PpmError::Header("zero size or bad maxval"));
    }
    let bytes_per_sample = if maxval > 255 { 2 } else { 1 };
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3 * bytes_per_sample))
        .ok_or(PpmError::Header("image too large"))?;
    let data = &rest[pos..];
    if data.len() < expected {
        return Err(PpmError::Truncated {
            got: data.len(),
            expected,
        });
    }
    let scale = |v: usize| -> u8 { u8::try_from(v * 255 / maxval).unwrap_or(u8::MAX) };
    let rgb: Vec<u8> = if bytes_per_sample == 1 {
        data[..expected]
            .iter()
            .map(|v| scale(usize::from(*v)))
            .collect()
    } else {
        data[..expected]
            .chunks_exact(2)
            .map(|v| scale(usize::from(u16::from_be_bytes([v[0], v[1]]))))
            .collect()
    };
    let w = u32::try_from(width).map_err(|_| PpmError::Header("image too wide"))?;
    let h = u32::try_from(height).map_err(|_| PpmError::Header("image too tall"))?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_converts_to_png() {
        let mut ppm = b"P6\n# made by hand\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let png_bytes = ppm_to_png(&ppm).expect("converts");
        assert!(png_bytes.starts_with(PNG_SIGNATURE));
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn bad_ppm_is_an_error_value() {
        assert!(matches!(ppm_to_png(b"GIF89a"), Err(PpmError::NotPpm)));
        assert!(matches!(
            ppm_to_png(b"P6 2 2 255\n\x00\x00"),
            Err(PpmError::Truncated {
                got: 2,
                expected: 12
            })
        ));
        assert!(matches!(ppm_to_png(b"P6 x"), Err(PpmError::Header(_))));
    }
}
