"""One job engine for every long job: the compute service's dashboard computations and the
export service's exports.

``control`` stops a job (pause, cancel, shutdown, lost lease) at its next boundary; ``store`` is
the protocol each service adapts to where it keeps jobs; ``kind`` is what a service declares
about its jobs; ``running`` is what running work sees; ``engine`` runs, watches, recovers and
retires them; ``following`` keeps watchers of a job another instance runs up to date.
"""
