//! The reply as a stream: the provider's events translated chunk for chunk, then the usage chunk
//! with the `chatedge` extension and `[DONE]`; a stream cut or failed mid-way ends with an
//! OpenAI-shaped error event and keeps what came. The Responses API gets the same chunks
//! rewritten as its typed events ([`Shape::Responses`]).

use super::call::{Call, Outcome};
use super::{ms_since, now_unix, Target};
use crate::anthropic_messages;
use crate::failure::stream_error_event;
use crate::providers::{self, StreamItem, StreamTranslator};
use crate::responses::{Ending, StreamWriter};
use crate::sse;
use futures::SinkExt;
use shared::outbound;
use shared::spin::{BodySink, Responder};

/// Why the stream stopped.
enum StreamEnd {
    Done,
    ClientGone,
    UpstreamError(providers::UpstreamError),
    Cut(String),
}

/// What the client's stream speaks.
pub(crate) enum Shape {
    /// Chat completion chunks (`data:` lines, `[DONE]`).
    Chat,
    /// The Responses API's typed events.
    Responses(Box<StreamWriter>),
    /// Anthropic's Messages events.
    Anthropic(Box<anthropic_messages::StreamWriter>),
}

pub(crate) async fn stream_reply(
    call: &mut Call,
    target: &Target,
    mut response: outbound::Response,
    responder: &mut Responder,
    mut shape: Shape,
) {
    let provider = target.config.provider;
    let mut headers = vec![
        ("content-type", "text/event-stream; charset=utf-8".to_owned()),
        ("cache-control", "no-cache".to_owned()),
        ("x-accel-buffering", "no".to_owned()),
        ("x-chatedge-provider", provider.name().to_owned()),
    ];
    if let Some(p) = &call.persisted {
        headers.push(("x-chatedge-conversation-id", p.conversation_id.clone()));
        headers.push(("x-chatedge-user-message-id", p.user_message_id.clone()));
        headers.push(("x-chatedge-message-id", p.assistant_message_id.clone()));
    }
    let Some(mut sink) = responder.start(200, &headers) else { return };
    let id = format!("chatcmpl-{}", outbound::random_id());
    let mut translator = StreamTranslator::new(provider, id, target.model.clone(), now_unix());
    let mut parser = sse::Parser::new();
    let mut ttft: Option<i64> = None;
    // The Responses API opens with `response.created` before the provider says anything.
    let opened = match &mut shape {
        Shape::Chat => true,
        Shape::Responses(writer) => sink.send(writer.start()).await.is_ok(),
        Shape::Anthropic(writer) => sink.send(writer.start()).await.is_ok(),
    };
    let end = if !opened {
        StreamEnd::ClientGone
    } else {
        loop {
            if call.remaining().is_zero() {
                break StreamEnd::Cut("the total deadline passed".into());
            }
            let chunk = match response.chunk().await {
                None => {
                    // Some servers close without a terminator once the finish reason is out.
                    if translator.reply.finish_reason.is_some() {
                        break StreamEnd::Done;
                    }
                    break StreamEnd::Cut("the provider closed the stream early".into());
                }
                Some(Err(e)) => break StreamEnd::Cut(format!("the provider stream failed: {e}")),
                Some(Ok(c)) => c,
            };
            let events = match parser.feed(&chunk) {
                Ok(ev) => ev,
                Err(e) => break StreamEnd::Cut(format!("malformed event stream: {e}")),
            };
            // Everything one upstream read produced goes out as one write (one flush through the host).
            let mut out = Vec::new();
            let mut stop = None;
            'events: for event in events {
                for item in translator.event(event.event.as_deref(), &event.data) {
                    match item {
                        StreamItem::Chunk(v) => {
                            if ttft.is_none() {
                                ttft = Some(ms_since(call.started_ns));
                            }
                            match &mut shape {
                                Shape::Chat => out.extend(sse::data_event(&v.to_string())),
                                Shape::Responses(writer) => out.extend(writer.chunk(&v)),
                                Shape::Anthropic(writer) => out.extend(writer.chunk(&v)),
                            }
                        }
                        StreamItem::Error(e) => {
                            stop = Some(StreamEnd::UpstreamError(e));
                            break 'events;
                        }
                        StreamItem::Done => {
                            stop = Some(StreamEnd::Done);
                            break 'events;
                        }
                    }
                }
            }
            if !out.is_empty() && sink.send(out).await.is_err() {
                break StreamEnd::ClientGone;
            }
            if let Some(stop) = stop {
                break stop;
            }
        }
    };
    // Closes the upstream connection whatever happened (a disconnected client stops the spend),
    // except after the provider's own end of stream: then the rest of its body (the chunked
    // terminator) is read once the client has everything, so the host can keep the connection
    // for the next call.
    let finished_upstream = match end {
        StreamEnd::Done => Some(response),
        _ => {
            drop(response);
            None
        }
    };
    let (status, error) = match &end {
        StreamEnd::Done => ("complete", None),
        StreamEnd::ClientGone => ("incomplete", Some("the client disconnected".to_owned())),
        StreamEnd::UpstreamError(e) => ("error", Some(e.message.clone())),
        StreamEnd::Cut(m) => ("incomplete", Some(m.clone())),
    };
    let (usage, cost, estimated) = call.finish(Outcome {
        status,
        text: translator.reply.text.clone(),
        tool_calls: translator.reply.tool_calls(),
        provider,
        model: translator.reply.model.clone(),
        usage: translator.reply.usage,
        error,
        ttft_ms: ttft,
    });
    if matches!(end, StreamEnd::ClientGone) {
        return;
    }
    let mut tail = Vec::new();
    let cut_code = |m: &str| {
        if m.contains("deadline") || m.contains("imeout") {
            "provider_timeout"
        } else {
            "provider_stream_cut"
        }
    };
    if let Shape::Responses(writer) = &mut shape {
        let ending = match &end {
            StreamEnd::UpstreamError(e) => Ending::Failed {
                code: e.code.clone().unwrap_or_else(|| "server_error".into()),
                message: e.message.clone(),
            },
            StreamEnd::Cut(m) => Ending::Failed {
                code: cut_code(m).into(),
                message: format!("{} stream interrupted: {m}", provider.name()),
            },
            StreamEnd::Done | StreamEnd::ClientGone => writer.natural_ending(),
        };
        tail.extend(writer.finish(&ending, usage, call.extension(cost, estimated, provider)));
        close_then_drain(sink, tail, finished_upstream).await;
        return;
    }
    if let Shape::Anthropic(writer) = &mut shape {
        // A stream that failed ends with Anthropic's error event; one that finished with the
        // stop reason and usage.
        match &end {
            StreamEnd::UpstreamError(e) => {
                let kind = if e.kind.contains("overloaded") { "overloaded_error" } else { "api_error" };
                tail.extend(writer.error(kind, &e.message));
            }
            StreamEnd::Cut(m) => {
                tail.extend(writer.error("api_error", &format!("{} stream interrupted: {m}", provider.name())))
            }
            StreamEnd::Done | StreamEnd::ClientGone => {
                tail.extend(writer.finish(usage, call.extension(cost, estimated, provider)))
            }
        }
        close_then_drain(sink, tail, finished_upstream).await;
        return;
    }
    match &end {
        StreamEnd::UpstreamError(e) => {
            tail.extend(sse::data_event(&e.to_json().to_string()));
        }
        StreamEnd::Cut(m) => {
            let message = format!("{} stream interrupted: {m}", provider.name());
            tail.extend(sse::data_event(&stream_error_event(&message, "server_error", cut_code(m)).to_string()));
        }
        StreamEnd::Done | StreamEnd::ClientGone => {}
    }
    let mut final_chunk = translator.reply.usage_chunk();
    final_chunk["usage"] = usage.to_json();
    final_chunk["chatedge"] = call.extension(cost, estimated, provider);
    tail.extend(sse::data_event(&final_chunk.to_string()));
    tail.extend_from_slice(sse::DONE);
    close_then_drain(sink, tail, finished_upstream).await;
}

/// Most chunks read after a provider's end of stream before its connection is given up.
const MAX_DRAIN_CHUNKS: usize = 8;

/// Sends the last bytes and ends the client's response; then reads what is left of a finished
/// upstream body (at most [`MAX_DRAIN_CHUNKS`]), which lets the host keep its connection.
async fn close_then_drain(mut sink: BodySink, tail: Vec<u8>, finished_upstream: Option<outbound::Response>) {
    let _ = sink.send(tail).await;
    drop(sink);
    if let Some(mut upstream) = finished_upstream {
        for _ in 0..MAX_DRAIN_CHUNKS {
            match upstream.chunk().await {
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            }
        }
    }
}
