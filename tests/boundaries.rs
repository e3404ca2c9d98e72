//! Objects that are what they claim to be (DESIGN.md, section 1): whatever another local user
//! plants under a server's names (a symbolic link, a hard link, a file of its own, a wrong
//! mode), neither a server nor a client of this user maps or locks it; each refuses with
//! `Error::ForeignObject` naming the object. The plants are made by a real second user (a
//! child process run as uid 4242, which needs no account); those cases are skipped, with a
//! printed reason, when the tests do not run as root.
#![cfg(unix)]

mod common;

use common::{echo, say, unique_name, wait_for_stdin_eof, Echo, Proc, ROLE};
use shmrpc::{Client, Error, Server};
use std::os::unix::fs::PermissionsExt;

const OTHER_UID: u32 = 4242;

fn object_path(name: &str) -> String {
    format!(
        "/dev/shm/shmrpc.{}.{name}",
        rustix::process::geteuid().as_raw()
    )
}

/// Entry point of every child process; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    say("started".into());
    // A file of this (other) user's, mode 0666, sized like a mapping.
    let own_file = |path: &str| {
        let f = std::fs::File::create_new(path).unwrap();
        f.set_len(256 << 10).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    };
    match args[..] {
        ["serve", name] => {
            let _server = Server::builder(name).serve(echo).unwrap();
            say("ready".into());
            wait_for_stdin_eof();
        }
        // Connects, then calls once told to (after the parent shrank the mapping's file).
        ["call-after", name] => {
            let client = Client::<Echo>::connect(name).unwrap();
            say("connected".into());
            assert_eq!(common::read_line(), "go");
            let _ = client.request(&Echo::new(1, "after the shrink"));
            say("survived".into());
        }
        ["plant", "file", path] => own_file(path),
        // A file of its own, mode 0600 (a non-root victim could not even open it: the EACCES
        // path; as root, which these tests need, the owner check refuses it).
        ["plant", "private", path] => {
            own_file(path);
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // A FIFO: opening it to read would wait for a writer, for ever.
        ["plant", "fifo", path] => {
            let c = std::ffi::CString::new(path).unwrap();
            // SAFETY: mkfifo reads the NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        }
        ["plant", "symlink", path] => {
            let target = format!("{path}.target");
            own_file(&target);
            std::os::unix::fs::symlink(&target, path).unwrap();
        }
        ["plant", "hardlink", path] => {
            let target = format!("{path}.target");
            own_file(&target);
            std::fs::hard_link(&target, path).unwrap();
        }
        _ => panic!("unknown child role {role:?}"),
    }
    if args[0] == "plant" {
        say(format!("planted {}", args[1]));
        wait_for_stdin_eof();
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Has the other user plant `kind` at `path`; `false` (with the reason printed) if this test
/// cannot run a second user here.
fn plant(kind: &str, path: &str) -> bool {
    let Some(mut p) = Proc::spawn_as(OTHER_UID, &["plant", kind, path]) else {
        println!("skipped: uid {OTHER_UID} cannot run this test binary here");
        return false;
    };
    assert_eq!(p.line(), format!("planted {kind}"));
    assert!(p.finish(std::time::Duration::from_secs(10)));
    true
}

fn remove_plant(path: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(format!("{path}.target"));
}

fn assert_foreign<T: std::fmt::Debug>(what: &str, r: Result<T, Error>, path: &str) {
    match r {
        Err(Error::ForeignObject { object, detail }) => {
            assert_eq!(object, path, "{what}");
            let text = Error::ForeignObject {
                object: object.clone(),
                detail: detail.clone(),
            }
            .to_string();
            assert!(text.contains(path) && text.contains("remove it"), "{text}");
            println!("{what}: refused: {text}");
        }
        other => panic!("{what}: expected ForeignObject for {path}, got {other:?}"),
    }
}

/// Another user's symlink, hard link or file under the mapping's name: the server does not
/// start on it (and says why, naming it), a client does not connect to it, a statistics view
/// does not open it, `list` does not read it and `clean` does not remove it.
#[test]
fn another_users_plant_under_the_mapping_name_is_refused_by_server_and_client() {
    if !is_root() {
        println!("skipped: planting as a second user needs root");
        return;
    }
    for kind in ["symlink", "hardlink", "file", "private", "fifo"] {
        let name = unique_name(&format!("plant-map-{kind}"));
        let path = object_path(&name);
        if !plant(kind, &path) {
            return;
        }
        assert_foreign(
            &format!("client, mapping {kind}"),
            Client::<Echo>::connect(&name),
            &path,
        );
        assert_foreign(
            &format!("server, mapping {kind}"),
            Server::builder(&name).serve(echo),
            &path,
        );
        assert_foreign(
            &format!("statistics view, mapping {kind}"),
            shmrpc::StatsView::open(&name),
            &path,
        );
        // `list` names it without reading it (no pid, not alive); `clean` leaves it alone.
        if let Some(e) = shmrpc::list().unwrap().iter().find(|e| e.name == name) {
            assert!(e.pid.is_none() && !e.alive, "list read a plant: {e:?}");
        }
        let removed = shmrpc::clean().unwrap();
        assert!(
            !removed.contains(&name),
            "clean removed another user's {kind}"
        );
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "clean removed another user's {kind}"
        );
        remove_plant(&path);
        // Once the plant is gone, the name works.
        let _server = Server::builder(&name).serve(echo).unwrap();
        let client = Client::<Echo>::connect(&name).unwrap();
        assert_eq!(client.request(&Echo::new(1, "ok")).unwrap().n, 1);
    }
}

/// Another user's symlink, hard link or file under the lock's name: the server neither locks
/// it nor creates a file where a link points; it refuses, naming the object.
#[test]
fn another_users_plant_under_the_lock_name_is_refused() {
    if !is_root() {
        println!("skipped: planting as a second user needs root");
        return;
    }
    for kind in ["symlink", "hardlink", "file"] {
        let name = unique_name(&format!("plant-lock-{kind}"));
        let path = format!("{}.lock", object_path(&name));
        if !plant(kind, &path) {
            return;
        }
        assert_foreign(
            &format!("server, lock {kind}"),
            Server::builder(&name).serve(echo),
            &path,
        );
        if kind == "symlink" {
            // The link's target was not replaced or written by us.
            let target = std::fs::metadata(format!("{path}.target")).unwrap();
            assert_eq!(target.len(), 256 << 10);
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&target), OTHER_UID);
        }
        remove_plant(&path);
    }
}

/// This user's own object with a mode other than 0600 (something widened it), or with a
/// second link to it, is refused too, by the client and the server.
#[test]
fn an_object_with_a_wrong_mode_or_a_second_link_is_refused() {
    let name = unique_name("mode");
    let path = object_path(&name);
    let f = std::fs::File::create_new(&path).unwrap();
    f.set_len(256 << 10).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_foreign("client, mode 0644", Client::<Echo>::connect(&name), &path);
    assert_foreign(
        "server, mode 0644",
        Server::builder(&name).serve(echo),
        &path,
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let other = format!("{path}.second-link");
    std::fs::hard_link(&path, &other).unwrap();
    assert_foreign("client, 2 links", Client::<Echo>::connect(&name), &path);
    assert_foreign("server, 2 links", Server::builder(&name).serve(echo), &path);
    std::fs::remove_file(&other).unwrap();
    std::fs::remove_file(&path).unwrap();
}

/// A mapping whose file was cut short or extended (its header says another size) is refused
/// with a typed error, not mapped past its end.
#[test]
fn a_truncated_or_oversized_mapping_is_refused() {
    let name = unique_name("size");
    let path = object_path(&name);
    let server = Server::builder(&name).serve(echo).unwrap();
    let image = std::fs::read(&path).unwrap();
    drop(server);
    for len in [64 << 10, image.len() * 2] {
        let mut bytes = image.clone();
        bytes.resize(len, 0);
        let f = std::fs::File::create_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        drop(f);
        match Client::<Echo>::connect(&name) {
            Err(Error::BadMessage(why)) => {
                assert!(why.contains("inconsistent header"), "{why}");
                println!("file of {len} bytes: {why}");
            }
            other => panic!("file of {len} bytes: {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}

/// What is not prevented (DESIGN.md, threat model): a process of the same user that shrinks
/// a mapping's file makes every process that then touches the lost pages die of SIGBUS, as
/// it could kill them outright. Here a client killed that way; the test documents the limit
/// (it fails if the behaviour changes, and the documentation must then change with it).
#[test]
fn a_same_user_shrink_of_the_mapping_kills_its_users_with_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let name = unique_name("shrink");
    let mut server = Proc::spawn(&["serve", &name]);
    assert_eq!(server.line(), "started");
    assert_eq!(server.line(), "ready");
    let mut client = Proc::spawn(&["call-after", &name]);
    assert_eq!(client.line(), "started");
    assert_eq!(client.line(), "connected");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(object_path(&name))
        .unwrap();
    file.set_len(0).unwrap();
    client.tell("go");
    let status = client.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    drop(server.child.kill());
}
