output "kubeconfig" {
  value       = constellation_cluster.this.kubeconfig
  sensitive   = true
  description = "The admin kubeconfig: terraform output -raw kubeconfig > admin.conf"
}

output "cluster_id" {
  value       = constellation_cluster.this.cluster_id
  description = "The cluster ID: every node's PCR 15 holds it once it belongs to the cluster."
}

output "owner_id" {
  value = constellation_cluster.this.owner_id
}

output "master_secret" {
  value       = constellation_cluster.this.master_secret
  sensitive   = true
  description = "The master secret (hex), which `constellation recover` needs if every control plane restarted."
}

output "nodes" {
  value = { for name, n in constellation_local_node.node : name => n.ip }
}

output "platform_ca_certificate" {
  value       = constellation_local_network.this.platform_ca_certificate
  description = "PEM certificate of the CA that certifies the nodes' vTPMs: what `constellation verify --platform-ca` needs."
}
