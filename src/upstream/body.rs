//! An upstream answer's body, read whole under a size cap and checked for printable ASCII as
//! it arrives.

/// An answer's body, and whether every byte of it is printable ASCII. Found while the body is
/// read, each block checked right after it is copied (while it is in the cache): a string of
/// such a body that has no escapes goes into JSON as it is ([`crate::model::Text`]), and
/// megabytes of base64 are not read once more to check it.
pub(crate) struct Body {
    pub bytes: bytes::Bytes,
    pub printable: bool,
}

/// Blocks small enough to be checked while the CPU's first cache still holds them.
const CHECK_BLOCK: usize = 16 * 1024;

/// The body of `res`, or `None` as soon as it is longer than `max` bytes (never held whole).
pub(super) async fn read_capped(
    res: reqwest::Response,
    max: usize,
) -> Result<Option<Body>, reqwest::Error> {
    use futures_util::StreamExt as _;
    if res.content_length().is_some_and(|len| len > max as u64) {
        return Ok(None);
    }
    // One buffer of the announced length: a 12 MiB answer is not grown (and copied) by doubling.
    let announced = res.content_length().map_or(0, |len| len as usize);
    let mut buf = bytes::BytesMut::with_capacity(announced);
    let mut printable = true;
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > max {
            return Ok(None);
        }
        for block in chunk.chunks(CHECK_BLOCK) {
            buf.extend_from_slice(block);
            printable &= crate::model::json_text::printable_ascii(block);
        }
    }
    Ok(Some(Body {
        bytes: buf.freeze(),
        printable,
    }))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    /// A body is read whole, in as many pieces as it came, and is printable only when every byte
    /// of every piece is; a body over the cap is not read whole.
    #[tokio::test]
    async fn a_body_is_read_whole_and_checked_for_printable_ascii() {
        async fn read(chunks: Vec<Vec<u8>>, max: usize) -> Option<Body> {
            let stream = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
            );
            let res = reqwest::Response::from(axum::http::Response::new(
                reqwest::Body::wrap_stream(stream),
            ));
            read_capped(res, max).await.unwrap()
        }
        let long = br#"{"b64_json":"QUJD+/="}"#.repeat(2_000);
        let body = read(vec![long.clone(), long.clone()], 1 << 20)
            .await
            .unwrap();
        assert_eq!(body.bytes.len(), 2 * long.len());
        assert!(body.printable);
        for bad in [b'\n', 0x1f, 0x7f, 0xc3] {
            let mut second = long.clone();
            second[CHECK_BLOCK + 3] = bad;
            let body = read(vec![long.clone(), second], 1 << 20).await.unwrap();
            assert!(!body.printable, "{bad:#x}");
        }
        assert!(read(vec![long.clone(), long.clone()], long.len())
            .await
            .is_none());
    }
}
