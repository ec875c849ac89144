variable "name" {
  type        = string
  description = "Cluster name; the bridge, the network namespaces and the nodes' state directories carry it."
}

variable "uid" {
  type        = string
  description = "Unique ID of this cluster's resources."
}

variable "init_secret" {
  type        = string
  sensitive   = true
  description = "Hex init secret that `constellation apply` shows the first control plane; nodes get only its SHA-256."
}

variable "image" {
  type        = string
  description = "Directory of the node image (constellation.efi, root.erofs, root.verity) of nodes without their own."
}

variable "bridge_cidr" {
  type        = string
  description = "Private IPv4 prefix of the cluster bridge."
}

variable "kubernetes_version" {
  type        = string
  description = "Pinned Kubernetes version whose components the provider serves to the nodes."
}

variable "services_dir" {
  type        = string
  description = "Directory with the services' image archives (joinservice.tar, keyservice.tar, verificationservice.tar)."
}

variable "nodes" {
  type = map(object({
    role               = string
    group              = string
    index              = number
    state_disk_size_gb = number
    instance_type      = string
    zone               = string
    image              = optional(string)
  }))
  description = "Nodes by name; image, if set, is the node's own image directory (a roll-out moves nodes one by one)."
}

variable "local_kms" {
  type        = bool
  default     = false
  description = "Run a KMS of the AWS KMS API (local-kms) on the bridge address, port 4599, with a key under alias/constellation, to try user-managed keys on one machine. Its keys are deleted with the network."
}
