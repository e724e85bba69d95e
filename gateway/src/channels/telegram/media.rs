//! Attachments' bytes: `getFile`, then a download from `{api_base}/file/bot<token>/<path>`.
//! That URL holds the bot token, so neither it nor any error quoting it leaves this module
//! unmasked (see `api::describe`).

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::StatusCode;

use super::Telegram;
use super::api::ApiError;
use crate::channels::{Media, MediaError, MediaStream};

/// The cloud Bot API lets a bot download files of up to 20 MB.
pub(super) const MAX_DOWNLOAD_BYTES: u64 = 20 * 1024 * 1024;
/// How long one whole download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

#[async_trait]
impl Media for Telegram {
    fn max_bytes(&self) -> u64 {
        MAX_DOWNLOAD_BYTES
    }

    async fn fetch(&self, file_id: &str) -> Result<MediaStream, MediaError> {
        let too_large = MediaError::TooLarge {
            limit: MAX_DOWNLOAD_BYTES,
        };
        let file = match self.api.get_file(file_id).await {
            Ok(file) => file,
            Err(ApiError::BadRequest(d)) if d.contains("file is too big") => return Err(too_large),
            Err(ApiError::BadRequest(d)) if d.contains("invalid file_id") => {
                return Err(MediaError::NotFound);
            }
            Err(e) => return Err(MediaError::Unavailable(e.to_string())),
        };
        if file.file_size.is_some_and(|size| size > MAX_DOWNLOAD_BYTES) {
            return Err(too_large);
        }
        let Some(path) = file.file_path else {
            return Err(MediaError::NotFound);
        };
        let response = self
            .api
            .download(&path, DOWNLOAD_TIMEOUT)
            .await
            .map_err(|e| MediaError::Unavailable(e.to_string()))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(MediaError::NotFound),
            other => {
                return Err(MediaError::Unavailable(format!(
                    "Telegram answered HTTP {} to the download",
                    other.as_u16()
                )));
            }
        }
        let size = response.content_length().or(file.file_size);
        if size.is_some_and(|size| size > MAX_DOWNLOAD_BYTES) {
            return Err(too_large);
        }
        let api = self.api.clone();
        let body = response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| MediaError::Unavailable(api.describe(e))));
        Ok(MediaStream {
            size,
            body: capped(body.boxed(), MAX_DOWNLOAD_BYTES),
        })
    }
}

/// Ends `body` with an error once it has yielded more than `limit` bytes: a provider that
/// announced less, or nothing, cannot make the gateway pass on more.
pub(super) fn capped(
    body: BoxStream<'static, Result<bytes::Bytes, MediaError>>,
    limit: u64,
) -> BoxStream<'static, Result<bytes::Bytes, MediaError>> {
    let mut seen: u64 = 0;
    body.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            return Err(MediaError::TooLarge { limit });
        }
        Ok(chunk)
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    #[tokio::test]
    async fn a_body_over_the_cap_ends_in_an_error() {
        let chunks = || {
            stream::iter([b"abcd".as_slice(), b"efgh".as_slice()])
                .map(|c| Ok(bytes::Bytes::from_static(c)))
                .boxed()
        };
        let within: Vec<_> = capped(chunks(), 8).collect().await;
        assert!(within.iter().all(Result::is_ok));
        let over: Vec<_> = capped(chunks(), 7).collect().await;
        assert!(over[0].is_ok());
        assert!(matches!(over[1], Err(MediaError::TooLarge { limit: 7 })));
    }
}
