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
  description = "Hex init secret that `constellation apply` shows the first control plane; nodes get only the SHA-256 of this string (tag init-secret-hash)."
}

variable "image" {
  type        = string
  description = "AMI ID of the node image."
}

variable "region" {
  type        = string
  description = "AWS region, e.g. eu-west-1."
}

variable "iam_instance_profile_control_plane" {
  type        = string
  description = "Name of the IAM instance profile of control-plane nodes."
}

variable "iam_instance_profile_worker_nodes" {
  type        = string
  description = "Name of the IAM instance profile of worker nodes."
}

variable "node_cidr" {
  type        = string
  default     = "192.168.176.0/20"
  description = "IPv4 prefix of the cluster's VPC; each availability zone gets a /24 of it."
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
  description = "Nodes by name; zone is the availability zone, instance_type must support AMD SEV-SNP (e.g. m6a, c6a, r6a)."
  validation {
    condition     = length([for n in values(var.nodes) : n if n.role == "control-plane"]) > 0
    error_message = "At least one node must have the role control-plane."
  }
}
