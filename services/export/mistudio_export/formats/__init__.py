"""Every output format of the export service, each in its own module with its schema beside it.

``prd_json`` (the PRD layout), ``neuronpedia_importer`` (Neuronpedia's database-row export),
``saedashboard_batch`` (SAEDashboard's batch-N.json), ``upload_payloads`` and
``neuronpedia_upload`` (the self-serve upload API); ``jsonio`` makes all of them deterministic.
The writers read the activation examples as column batches (``columns``) and write them with
``bulk_json``, a batch at a time.
"""
