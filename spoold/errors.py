"""Exception types, one per kind of failure a user can act on.

The CLI (spoold.cli) turns each into a one-line message on stderr and a
non-zero exit status; nothing below the CLI prints or exits.  Every type
carries a message that already names the bad thing (file, key, line, address).
"""


class SpooldError(Exception):
    """Base of every error spoold reports to a user."""

    exit_status = 1


class ConfigError(SpooldError):
    """The configuration file is missing, unreadable or has a bad key/value."""

    exit_status = 78  # EX_CONFIG


class AddressError(SpooldError):
    """An e-mail address is malformed."""

    exit_status = 65  # EX_DATAERR


class MessageError(SpooldError):
    """A message to enqueue is unreadable or malformed."""

    exit_status = 65  # EX_DATAERR


class StoreError(SpooldError):
    """The database refused an operation or holds an unexpected schema."""

    exit_status = 74  # EX_IOERR


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; retrying later may work."""

    exit_status = 75  # EX_TEMPFAIL


class AlreadyRunning(SpooldError):
    """Another runner holds the lock of this run directory."""

    exit_status = 75  # EX_TEMPFAIL


class NotFound(SpooldError):
    """A queue id or other named object does not exist."""

    exit_status = 67  # EX_NOUSER


class UsageError(SpooldError):
    """A command-line argument is malformed (a bad domain name, say)."""

    exit_status = 64  # EX_USAGE


class CannotCreate(SpooldError):
    """An output file cannot be written (or exists and is not to be overwritten)."""

    exit_status = 73  # EX_CANTCREAT


class ReportError(SpooldError):
    """A bounce or feedback report names no recipient in any form spoold reads."""

    exit_status = 65  # EX_DATAERR


class TemplateError(SpooldError):
    """A template does not compile or names a placeholder nobody provides."""

    exit_status = 65  # EX_DATAERR


class FilterError(SpooldError):
    """A contact filter (mailout create --where) does not parse."""

    exit_status = 64  # EX_USAGE


class ContactsFileError(SpooldError):
    """A contacts file is unreadable or (with --strict) has bad lines."""

    exit_status = 65  # EX_DATAERR


class BadToken(SpooldError):
    """An unsubscribe token is malformed or was not made with our secret."""

    exit_status = 65  # EX_DATAERR


class Exists(SpooldError):
    """An object to create (a user, say) exists already."""

    exit_status = 73  # EX_CANTCREAT
