"""The REST and Server-Sent-Events face of the export service (PRD FR-4.3), over gRPC."""
