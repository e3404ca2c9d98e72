//! Objects that are what they claim to be, on Windows (DESIGN.md, section 1): a server's files
//! are created open to this user alone, and whatever is planted under a server's names (a file
//! whose access list lets others in, a hard link, a directory, a symbolic link) is refused with
//! `Error::ForeignObject` naming it, by servers and clients alike. Wine has one user, so the
//! plants here are made by this user with the access lists or links another user's plant would
//! have; the checks look at exactly those.
#![cfg(windows)]

mod common;

use common::{echo, unique_name, Echo};
use shmrpc::{Client, Error, Server};
use windows_sys::Win32::Foundation::{CloseHandle, GENERIC_READ, GENERIC_WRITE};
use windows_sys::Win32::Foundation::{LocalFree, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    GetAce, ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION,
    OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, CreateHardLinkW, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_DELETE,
    FILE_SHARE_READ, FILE_SHARE_WRITE,
};

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The objects' directory (`%LOCALAPPDATA%\shmrpc`).
fn objects_dir() -> String {
    format!("{}\\shmrpc", std::env::var("LOCALAPPDATA").unwrap())
}

/// The path of server `name`'s mapping, found by starting a server under a scratch name and
/// looking for its file (object names carry a per-user number that only the library knows).
fn object_path(name: &str) -> String {
    let probe = unique_name("probe");
    let server = Server::builder(&probe).serve(echo).unwrap();
    let file = std::fs::read_dir(objects_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|f| f.ends_with(&format!(".{probe}")))
        .expect("the probe server's file");
    drop(server);
    let prefix = file.strip_suffix(&probe).unwrap();
    format!("{}\\{prefix}{name}", objects_dir())
}

fn sid_text(sid: PSID) -> String {
    let mut p: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is a valid SID; `p` receives a LocalAlloc'd string, freed below.
    assert_ne!(unsafe { ConvertSidToStringSidW(sid, &mut p) }, 0);
    // SAFETY: a NUL-terminated UTF-16 string.
    let text = unsafe {
        let n = (0..).take_while(|&i| *p.add(i) != 0).count();
        String::from_utf16_lossy(std::slice::from_raw_parts(p, n))
    };
    // SAFETY: allocated by ConvertSidToStringSidW.
    unsafe { LocalFree(p.cast()) };
    text
}

/// The owner of `path` and the SIDs its access list allows, as strings.
fn security_of(path: &str) -> (String, Vec<String>) {
    let w = wide(path);
    let (mut owner, mut dacl, mut sd): (PSID, *mut ACL, PSECURITY_DESCRIPTOR) = (
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    // SAFETY: `w` is NUL-terminated; the out-pointers point into `sd`, freed below.
    let err = unsafe {
        GetNamedSecurityInfoW(
            w.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    assert_eq!(err, 0, "reading the security of {path}");
    assert!(!dacl.is_null(), "{path} has no access list");
    let mut allowed = Vec::new();
    // SAFETY: `dacl` is a valid ACL inside `sd`; each ACE starts with its header.
    unsafe {
        for i in 0..u32::from((*dacl).AceCount) {
            let mut ace = std::ptr::null_mut();
            assert_ne!(GetAce(dacl, i, &mut ace), 0);
            if (*ace.cast::<ACE_HEADER>()).AceType == 0 {
                let sid = std::ptr::addr_of_mut!((*ace.cast::<ACCESS_ALLOWED_ACE>()).SidStart);
                allowed.push(sid_text(sid.cast()));
            }
        }
    }
    let owner = sid_text(owner);
    // SAFETY: allocated by GetNamedSecurityInfoW; nothing points into it any more.
    unsafe { LocalFree(sd) };
    (owner, allowed)
}

/// Creates `path` (a file of 256 KiB) with the access list of SDDL `dacl`: a plant.
fn plant_file(path: &str, dacl: &str) {
    let sddl = wide(dacl);
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: NUL-terminated SDDL; `sd` is freed below.
    assert_ne!(
        unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        },
        0
    );
    let sa = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd,
        bInheritHandle: 0,
    };
    let w = wide(path);
    // SAFETY: NUL-terminated path; `sa` is alive for the call.
    let h = unsafe {
        CreateFileW(
            w.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            &sa,
            CREATE_NEW,
            FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        )
    };
    assert_ne!(h, INVALID_HANDLE_VALUE, "planting {path}");
    // SAFETY: our handle, closed once; the descriptor came from LocalAlloc.
    unsafe {
        CloseHandle(h);
        LocalFree(sd);
    }
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(256 << 10).unwrap();
}

/// This user's SID, read off a file this process created.
fn my_sid() -> String {
    let path = format!("{}\\sid-probe-{}", objects_dir(), std::process::id());
    std::fs::write(&path, b"").unwrap();
    let (owner, _) = security_of(&path);
    std::fs::remove_file(&path).unwrap();
    owner
}

fn assert_foreign(err: Error, path: &str, detail: &str) {
    match &err {
        Error::ForeignObject { object, detail: d } => {
            assert!(object.eq_ignore_ascii_case(path), "{err}");
            assert!(d.contains(detail), "{err}");
        }
        _ => panic!("expected ForeignObject for {path}, got {err:?}"),
    }
}

/// The mapping, its lock object and their directory belong to this user and let no one else in.
#[test]
fn a_servers_objects_and_their_directory_are_this_users_alone() {
    let name = unique_name("acl");
    let path = object_path(&name);
    let _server = Server::builder(&name).serve(echo).unwrap();
    let me = my_sid();
    for p in [path.clone(), format!("{path}.lock"), objects_dir()] {
        let (owner, allowed) = security_of(&p);
        assert_eq!(owner, me, "owner of {p}");
        assert!(
            allowed.contains(&me),
            "{p} does not let its owner in: {allowed:?}"
        );
        // Nobody else, except the system and the administrators, who can take any file
        // anyway (wine lists the system in every file's access list).
        let others: Vec<_> = allowed
            .iter()
            .filter(|s| **s != me && *s != "S-1-5-18" && *s != "S-1-5-32-544")
            .collect();
        assert!(others.is_empty(), "{p} lets others in: {others:?}");
    }
}

/// A file planted under a server's name whose access list lets everyone in is refused, by a
/// client (connect) and by a server (start), naming the object and who else may open it.
#[test]
fn a_planted_file_open_to_others_is_refused_by_clients_and_servers() {
    let name = unique_name("plant");
    let path = object_path(&name);
    plant_file(&path, &format!("D:(A;;GA;;;{})(A;;GA;;;WD)", my_sid()));
    let err = Client::<Echo>::connect(&name).unwrap_err();
    assert_foreign(err, &path, "S-1-1-0");
    let err = Server::builder(&name).serve(echo).unwrap_err();
    assert_foreign(err, &path, "S-1-1-0");
    std::fs::remove_file(&path).unwrap();
    // Once it is gone, the name works.
    let _server = Server::builder(&name).serve(echo).unwrap();
    assert_eq!(
        Client::<Echo>::connect(&name)
            .unwrap()
            .request(&Echo::new(3, "x"))
            .unwrap()
            .n,
        3
    );
}

/// A running server's mapping with a second (hard) link is no longer trusted by new clients.
#[test]
fn a_mapping_with_a_second_link_is_refused() {
    let name = unique_name("link");
    let path = object_path(&name);
    let _server = Server::builder(&name).serve(echo).unwrap();
    let other = format!("{}\\elsewhere-{name}", objects_dir());
    let (w_new, w_old) = (wide(&other), wide(&path));
    // SAFETY: both NUL-terminated.
    assert_ne!(
        unsafe { CreateHardLinkW(w_new.as_ptr(), w_old.as_ptr(), std::ptr::null()) },
        0,
        "linking {other}"
    );
    let err = Client::<Echo>::connect(&name).unwrap_err();
    // (Windows removes the link only once the file's last handle closes, the server's.)
    std::fs::remove_file(&other).unwrap();
    assert_foreign(err, &path, "2 links");
}

/// A directory under a server's name: a clear refusal that says what is there, for a client and
/// for a server.
#[test]
fn a_directory_under_the_name_is_refused_as_a_directory() {
    let name = unique_name("dir");
    let path = object_path(&name);
    std::fs::create_dir(&path).unwrap();
    let client = Client::<Echo>::connect(&name).unwrap_err();
    let server = Server::builder(&name).serve(echo).unwrap_err();
    std::fs::remove_dir(&path).unwrap();
    assert_foreign(client, &path, "directory");
    assert_foreign(server, &path, "directory");
}
