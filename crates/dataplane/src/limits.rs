//! Process limits the tools that open many sockets need raised.

/// Raises the open-file limit to `want`: past the hard limit where the
/// process may (CAP_SYS_RESOURCE), else to the hard limit. Returns the
/// limit in force (the caller checks it is enough).
pub fn raise_fd_limit(want: u64) -> std::io::Result<u64> {
    // SAFETY: `rlimit` is plain old data; all zeroes is a valid value.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur >= want {
        return Ok(r.rlim_cur);
    }
    // Root may raise the hard limit too.
    let target = if r.rlim_max >= want || crate::is_root() {
        want
    } else {
        r.rlim_max
    };
    let new = libc::rlimit {
        rlim_cur: target,
        rlim_max: r.rlim_max.max(target),
    };
    // SAFETY: `new` is a valid rlimit for the call's duration.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return Ok(target);
    }
    // Root without CAP_SYS_RESOURCE (a container): up to the hard limit.
    let hard = libc::rlimit {
        rlim_cur: r.rlim_max,
        rlim_max: r.rlim_max,
    };
    // SAFETY: `hard` is a valid rlimit for the call's duration.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &hard) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r.rlim_max)
}
