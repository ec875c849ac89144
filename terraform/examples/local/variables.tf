variable "name" {
  type        = string
  default     = "tf-local"
  description = "Cluster name (a DNS label): the bridge, the nodes' namespaces and state directories carry it."
}

variable "image_dir" {
  type        = string
  description = "Absolute path of a built node image directory (make build puts one in out/image)."
}

variable "services_dir" {
  type        = string
  description = "Absolute path of the services' image archives (make build puts them in out/services)."
}

variable "kubernetes_version" {
  type        = string
  default     = "v1.33.13"
  description = "Pinned Kubernetes version the cluster is initialized with."
}

variable "bridge_cidr" {
  type        = string
  default     = "10.78.0.0/24"
  description = "Private IPv4 prefix of the cluster's bridge; it must not overlap a network of this machine."
}

variable "init_secret" {
  type        = string
  sensitive   = true
  description = "At least 16 random characters (e.g. TF_VAR_init_secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')): nodes accept an init request only with it."
}
