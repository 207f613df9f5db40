//! Local user names and uids, through the system's user database (getpwnam_r(3),
//! getpwuid_r(3)): `/etc/passwd`, and whatever NSS adds (LDAP, systemd's dynamic users).

#[cfg(unix)]
use std::collections::HashMap;
#[cfg(unix)]
use std::sync::Mutex;

/// The uid tokenrelay runs as: the effective uid, the one the kernel records as the owner of
/// the sockets this process creates.
#[cfg(unix)]
pub fn running_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(not(unix))]
pub fn running_uid() -> u32 {
    u32::MAX
}

/// The uid of the user called `name`; `Ok(None)` when there is none.
#[cfg(unix)]
pub fn uid_of(name: &str) -> std::io::Result<Option<u32>> {
    let Ok(cname) = std::ffi::CString::new(name) else { return Ok(None) };
    passwd(|pwd, buf, len, result| {
        // SAFETY: every pointer is valid for the call: `cname` outlives it, and `pwd`, `buf`
        // (of `len` bytes) and `result` are the caller's locals.
        unsafe { libc::getpwnam_r(cname.as_ptr(), pwd, buf, len, result) }
    })
    .map(|found| found.map(|(uid, _)| uid))
}

#[cfg(not(unix))]
pub fn uid_of(_name: &str) -> std::io::Result<Option<u32>> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "user names need a Unix user database; give the uid"))
}

/// The name of `uid`, when the user database has one. Answers are cached: a refused peer
/// asks at every connection, and a lookup may go to the network (LDAP).
#[cfg(unix)]
pub fn name_of(uid: u32) -> Option<String> {
    static CACHE: Mutex<Option<HashMap<u32, Option<String>>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(name) = cache.get(&uid) {
        return name.clone();
    }
    let name = passwd(|pwd, buf, len, result| {
        // SAFETY: as in `uid_of`: `pwd`, `buf` (of `len` bytes) and `result` are valid.
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
    .ok()
    .flatten()
    .map(|(_, name)| name);
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(uid, name.clone());
    name
}

#[cfg(not(unix))]
pub fn name_of(_uid: u32) -> Option<String> {
    None
}

/// Runs a getpw*_r `call`, growing its buffer while it says `ERANGE`; the uid and name found.
#[cfg(unix)]
fn passwd(
    mut call: impl FnMut(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
) -> std::io::Result<Option<(u32, String)>> {
    let mut size = 1024;
    loop {
        // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success `pw_name` points to a NUL-terminated string inside `buf`,
                // which is still alive here.
                let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
                return Ok(Some((pwd.pw_uid, name)));
            }
            libc::ERANGE if size < 1 << 20 => size *= 4,
            // getpwnam_r(3): these also mean "no such user" on some systems.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn root_is_uid_0_both_ways() {
        assert_eq!(uid_of("root").unwrap(), Some(0));
        assert_eq!(name_of(0).as_deref(), Some("root"));
        assert_eq!(uid_of("no-such-user-tokenrelay").unwrap(), None);
        assert_eq!(uid_of("nul\0inside").unwrap(), None);
    }
}
