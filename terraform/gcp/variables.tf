variable "name" {
  type        = string
  description = "Cluster name; every resource name starts with <name>-<uid>."
}

variable "uid" {
  type        = string
  description = "Unique ID of this cluster's resources."
  validation {
    condition     = can(regex("^[a-z0-9]{1,16}$", var.uid))
    error_message = "The uid must be 1 to 16 lower-case letters and digits."
  }
}

variable "init_secret" {
  type        = string
  sensitive   = true
  description = "Hex init secret that `constellation apply` shows the first control plane; nodes get only the SHA-256 of this string (metadata init-secret-hash)."
}

variable "image" {
  type        = string
  description = "Node image: self link or projects/<project>/global/images/<image>."
}

variable "project" {
  type        = string
  description = "GCP project ID."
}

variable "region" {
  type        = string
  description = "GCP region, e.g. europe-west3."
}

variable "credentials_file" {
  type        = string
  description = "Path of the service account key file, absolute or relative to this directory."
}

variable "node_cidr" {
  type        = string
  default     = "192.168.176.0/20"
  description = "IPv4 prefix of the nodes' subnetwork."
}

variable "secure_boot" {
  type        = bool
  default     = false
  description = "Enable UEFI Secure Boot; only for images whose boot chain is signed by a key in GCP's default database. Measured boot does not need it."
}

variable "nodes" {
  type = map(object({
    role               = string
    group              = string
    index              = number
    state_disk_size_gb = number
    instance_type      = string
    zone               = string
  }))
  description = "Nodes by name; zone is a zone of the region, instance_type an N2D machine type (SEV-SNP needs AMD Milan)."
  validation {
    condition     = length([for n in values(var.nodes) : n if n.role == "control-plane"]) > 0
    error_message = "At least one node must have the role control-plane."
  }
}
