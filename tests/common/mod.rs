//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

/// A server name unique to this process and call site, so tests never collide.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The message the tests' echo servers use.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
pub struct Echo {
    /// A number the client chooses; the reply carries it back.
    pub n: u64,
    /// Free text; the reply carries it back with a prefix.
    pub text: String,
    /// In a reply: the call id the handler saw.
    pub id: [u8; 16],
    /// The handler sleeps this many milliseconds before replying.
    pub sleep_ms: u32,
}

impl Echo {
    pub fn new(n: u64, text: impl Into<String>) -> Echo {
        Echo {
            n,
            text: text.into(),
            id: [0; 16],
            sleep_ms: 0,
        }
    }
}

/// The echo handler: sleeps if asked, panics on `text == "panic"`, and otherwise replies with
/// the same number, the text prefixed with "re:", and the call id it saw.
pub fn echo(req: shmrpc::Request<'_, Echo>) -> Echo {
    if req.sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(
            req.sleep_ms.to_native(),
        )));
    }
    if req.text == "panic" {
        panic!("the test asked this handler to panic");
    }
    Echo {
        n: req.n.to_native(),
        text: format!("re:{}", req.text),
        id: *req.id().as_bytes(),
        sleep_ms: 0,
    }
}
