//! What to do after one attempt of a request: pass the answer on, try again, send it
//! to the stable version instead (shielding), or answer with an error. A pure
//! function of what happened and what is known about the request, so that every
//! case is a unit test; the engine does the I/O around it.

/// How one attempt on one upstream connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A response head came, with this status.
    Answered(u16),
    /// Could not connect: nothing was sent.
    ConnectFailed,
    /// A reused keep-alive connection failed before any response byte: the backend
    /// had closed it, so it never saw the request.
    StalePooled,
    /// A fresh connection failed before a response head: the backend may have
    /// acted on the request.
    Lost,
    /// The response head was not one the router can pass on.
    BadResponse,
    /// No response head within the response timeout.
    TimedOut,
}

/// What is known about the request, fixed for all its attempts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// Its body is held whole, so it can be sent again.
    pub replayable: bool,
}

/// Where the request's attempts stand.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    /// Attempts made, this one included.
    pub made: usize,
    /// Most attempts allowed.
    pub max: usize,
    /// The body was streamed to this attempt: it cannot be sent again.
    pub streamed: bool,
    /// This attempt went to a non-stable version of a shielded app, and shielding was
    /// not used yet for this request.
    pub shield_here: bool,
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Pass the response on to the user.
    Respond,
    /// Try again on another connection or backend of the same version. `counted`:
    /// the failed attempt counts against the maximum (a stale pooled connection does
    /// not: the request never reached anyone).
    Retry { counted: bool },
    /// The stable version answers instead; the failure counts against the version
    /// that failed, though the user never sees it.
    Shield,
    /// 502 Bad Gateway.
    BadGateway,
    /// 504 Gateway Timeout.
    GatewayTimeout,
}

/// The step after an attempt that `ended` so.
pub(crate) fn next(ended: Ended, req: Request, at: Progress) -> Next {
    let shieldable = at.shield_here && req.idempotent && req.replayable && !at.streamed;
    match ended {
        Ended::Answered(status) if status >= 500 && shieldable => Next::Shield,
        Ended::Answered(_) => Next::Respond,
        // A timeout is the user's answer even when shielded: waiting once is enough.
        Ended::TimedOut => Next::GatewayTimeout,
        _ if shieldable && ended != Ended::StalePooled => Next::Shield,
        Ended::StalePooled if at.streamed => Next::BadGateway,
        Ended::StalePooled => Next::Retry { counted: false },
        // Nothing was sent: any request may go elsewhere.
        Ended::ConnectFailed if at.made < at.max => Next::Retry { counted: true },
        // The backend may have acted on it: only an idempotent request held whole goes
        // again.
        Ended::Lost | Ended::BadResponse
            if req.idempotent && req.replayable && !at.streamed && at.made < at.max =>
        {
            Next::Retry { counted: true }
        }
        _ => Next::BadGateway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Request = Request {
        idempotent: true,
        replayable: true,
    };
    const POST: Request = Request {
        idempotent: false,
        replayable: true,
    };
    const FIRST: Progress = Progress {
        made: 1,
        max: 3,
        streamed: false,
        shield_here: false,
    };

    #[test]
    fn answers_are_passed_on_and_timeouts_answered() {
        for status in [200, 404, 500, 503] {
            assert_eq!(next(Ended::Answered(status), GET, FIRST), Next::Respond);
        }
        assert_eq!(next(Ended::TimedOut, GET, FIRST), Next::GatewayTimeout);
    }

    #[test]
    fn only_what_is_safe_to_send_twice_is_sent_twice() {
        let retry = Next::Retry { counted: true };
        assert_eq!(next(Ended::ConnectFailed, POST, FIRST), retry);
        assert_eq!(next(Ended::Lost, GET, FIRST), retry);
        assert_eq!(next(Ended::BadResponse, GET, FIRST), retry);
        assert_eq!(next(Ended::Lost, POST, FIRST), Next::BadGateway);
        let held_not = Request {
            idempotent: true,
            replayable: false,
        };
        assert_eq!(next(Ended::Lost, held_not, FIRST), Next::BadGateway);
        // A stale keep-alive connection never saw the request: always again, and it
        // does not count.
        assert_eq!(
            next(Ended::StalePooled, POST, FIRST),
            Next::Retry { counted: false }
        );
        // Out of attempts.
        let last = Progress { made: 3, ..FIRST };
        assert_eq!(next(Ended::Lost, GET, last), Next::BadGateway);
        assert_eq!(next(Ended::ConnectFailed, GET, last), Next::BadGateway);
    }

    #[test]
    fn a_streamed_body_is_never_sent_twice() {
        let streamed = Progress {
            streamed: true,
            ..FIRST
        };
        assert_eq!(next(Ended::Lost, GET, streamed), Next::BadGateway);
        assert_eq!(next(Ended::StalePooled, GET, streamed), Next::BadGateway);
        // Unless nothing was sent at all.
        assert_eq!(
            next(Ended::ConnectFailed, GET, streamed),
            Next::Retry { counted: true }
        );
    }

    #[test]
    fn shielding_sends_failures_of_a_new_version_to_the_stable_one() {
        let shielded = Progress {
            shield_here: true,
            ..FIRST
        };
        assert_eq!(next(Ended::Answered(502), GET, shielded), Next::Shield);
        assert_eq!(next(Ended::Answered(404), GET, shielded), Next::Respond);
        assert_eq!(next(Ended::Lost, GET, shielded), Next::Shield);
        assert_eq!(next(Ended::ConnectFailed, GET, shielded), Next::Shield);
        assert_eq!(next(Ended::TimedOut, GET, shielded), Next::GatewayTimeout);
        // Not what cannot be sent again.
        assert_eq!(next(Ended::Answered(500), POST, shielded), Next::Respond);
        assert_eq!(next(Ended::Lost, POST, shielded), Next::BadGateway);
        // A stale pooled connection is retried on the same version.
        assert_eq!(
            next(Ended::StalePooled, GET, shielded),
            Next::Retry { counted: false }
        );
    }
}
