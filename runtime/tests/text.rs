//! Tokenizer wrapper (byte-level BPE built in memory), streaming decode, and chat templates.

use cllm_runtime::{ChatError, ChatMessage, ChatTemplate, Tokenizer};
use serde_json::json;

/// GPT-2's byte-to-character table used by byte-level BPE.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A byte-level BPE tokenizer: the 256 bytes, a few merges, and chat special tokens.
fn tokenizer_json() -> String {
    let table = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (i, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
    for (i, m) in merges.iter().enumerate() {
        vocab.insert(m.replace(' ', ""), json!(256 + i));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(261, "<|im_start|>"), special(262, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

#[test]
fn encode_decode_round_trip_without_special_tokens_added() {
    let t = Tokenizer::from_bytes(tokenizer_json().as_bytes()).unwrap();
    let ids = t.encode("hello world", false).unwrap();
    assert_eq!(ids[0], 259, "merged `hello` first, no BOS: {ids:?}");
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&261));
    assert_eq!(ids.last(), Some(&262));
    assert_eq!(t.decode(&ids, true).unwrap(), "user\nhi");
    assert_eq!(t.token_to_id("<|im_end|>"), Some(262));
    assert!(Tokenizer::from_bytes(b"{not json").is_err());
}

#[test]
fn streaming_emits_only_complete_utf8() {
    let t = Tokenizer::from_bytes(tokenizer_json().as_bytes()).unwrap();
    let text = "héllo 🙂 wörld, 日本";
    let ids = t.encode(text, false).unwrap();
    let mut stream = t.stream(false);
    let mut pieces = Vec::new();
    let mut held = 0;
    for &id in &ids {
        match stream.push(id).unwrap() {
            Some(p) => {
                assert!(
                    !p.contains('\u{FFFD}'),
                    "incomplete character emitted: {p:?}"
                );
                pieces.push(p);
            }
            None => held += 1,
        }
    }
    if let Some(p) = stream.finish().unwrap() {
        pieces.push(p);
    }
    assert_eq!(pieces.concat(), text);
    // The emoji (4 bytes) and each CJK character (3 bytes) are several byte tokens.
    assert!(held >= 3 + 2 + 2, "held back {held}");
}

const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn renders_smollm2_template_from_tokenizer_config() {
    let cfg = json!({"chat_template": SMOLLM2_TEMPLATE, "bos_token": "<|im_start|>",
                     "eos_token": {"content": "<|im_end|>", "special": true}})
    .to_string();
    let tpl = ChatTemplate::from_tokenizer_config(&cfg, None).unwrap();
    let out = tpl.render(&[ChatMessage::user("Hi there")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = tpl
        .render(
            &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
            false,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn python_methods_block_trimming_and_special_token_variables() {
    // Block tags on their own lines vanish with their newline (trim_blocks + lstrip_blocks).
    let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n[{{ m.role.upper() }}] {{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n";
    let tpl = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into()));
    let out = tpl
        .render(&[ChatMessage::user("  padded  ")], true)
        .unwrap();
    assert_eq!(out, "<s>\n[USER] padded</s>\n");
    let e = tpl.render(&[ChatMessage::system("x")], true).unwrap_err();
    assert!(e.to_string().contains("bad role system"), "{e}");
}

#[test]
fn template_sources_and_missing_template() {
    let cfg = json!({"bos_token": "<s>"}).to_string();
    assert!(matches!(
        ChatTemplate::from_tokenizer_config(&cfg, None),
        Err(ChatError::NoTemplate)
    ));
    let tpl = ChatTemplate::from_tokenizer_config(&cfg, Some("{{ messages[0].content }}")).unwrap();
    assert_eq!(tpl.render(&[ChatMessage::user("x")], true).unwrap(), "x");
    let cfg = json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})
        .to_string();
    let tpl = ChatTemplate::from_tokenizer_config(&cfg, None).unwrap();
    assert_eq!(tpl.render(&[], false).unwrap(), "D");
}
