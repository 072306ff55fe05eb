"""Platform glue: S3/local storage, the MLflow registry, MPIJob and InferenceService builders."""
