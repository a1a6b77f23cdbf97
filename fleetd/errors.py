"""The exception hierarchy shared by fleetd, fleetctl and the registry.

Every error a user can cause carries a message that names the unit, file,
option or key concerned, so that the CLI can print it on one line.
"""


class FleetError(Exception):
    """Base of every error raised on purpose by this project."""


class ConfigError(FleetError):
    """A bad configuration value (file, environment variable or flag)."""


# --- unit files -------------------------------------------------------------


class UnitError(FleetError):
    """Something wrong with a unit: its name, its file or its options."""


class InvalidUnitName(UnitError):
    """A unit name that fleet (or systemd) would not accept."""


class UnitFileError(UnitError):
    """A unit file that cannot be parsed (syntax, line length, encoding)."""


class InvalidUnitOptions(UnitError):
    """A syntactically valid unit whose [X-Fleet] options are invalid or forbidden together."""


# --- registry (etcd) ----------------------------------------------------------


class RegistryError(FleetError):
    """A failure talking to, or a conflict inside, the etcd registry."""


class RegistryUnavailable(RegistryError):
    """etcd could not be reached within the request timeout."""


class UnitNotFound(RegistryError):
    """The named unit does not exist in the registry."""


class UnitConflict(RegistryError):
    """A write lost a compare-and-swap race or contradicts what is stored."""


class DuplicateMachine(RegistryError):
    """Another live fleetd already holds this machine ID."""


# --- fleet HTTP API (client side) ---------------------------------------------


class ApiUnavailable(RegistryUnavailable):
    """The fleet API endpoint could not be reached (or answered 503: fleetd cut off from etcd)."""


class ApiError(RegistryError):
    """The fleet API answered with an error status; `code` is the HTTP status."""

    def __init__(self, message: str, code: int = 500) -> None:
        super().__init__(message)
        self.code = code


# --- systemd ------------------------------------------------------------------


class SystemdError(FleetError):
    """A D-Bus call to systemd failed."""


class SystemdUnitError(SystemdError):
    """An operation on named units failed for some of them (a job result other than 'done',
    or a refused D-Bus call). `failures` maps each failed unit to its job result or error."""

    def __init__(self, operation: str, failures: "dict[str, str]") -> None:
        self.operation = operation
        self.failures = dict(failures)
        detail = ", ".join(f"{name} ({why})" for name, why in sorted(self.failures.items()))
        super().__init__(f"systemd {operation} failed for {detail}")


# --- images and containers ----------------------------------------------------


class ImageError(FleetError):
    """A failure in the local image store (import, lookup, removal, export)."""


class ImageNotFound(ImageError):
    """No image with that name or digest in the store."""


class UnsafeArchive(ImageError):
    """An archive member that would escape the image root (traversal, bad link, bad digest)."""


class LaunchError(FleetError):
    """fleet-run could not start the container; ``exit_code`` follows docker (125/126/127)."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- local lab (fleetlab) -----------------------------------------------------


class LabError(FleetError):
    """The local test lab (fleetlab) could not build, run or tear down a node or network."""


class BenchmarkError(FleetError):
    """A benchmark could not complete (timeout, inconsistent result, missing tool)."""
