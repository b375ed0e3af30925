"""A small Kubernetes API client: where the API server is (kubeconfig), how to authenticate (exec credentials), list,
watch, create, and when to retry."""
