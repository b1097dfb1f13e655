//! The engine's SSE stream: any bytes, in any chunking, decode without panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut decoder = engine::sse::SseDecoder::default();
    for chunk in data.chunks(split) {
        for item in decoder.push(chunk) {
            if let engine::sse::SseItem::Data(d) = item {
                let _ = engine::sse::CompletionFrame::parse(&d);
            }
        }
    }
});
