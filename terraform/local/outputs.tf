output "cluster_endpoint" {
  value       = local.first_ip
  description = "The first control plane's address on the bridge (there is no load balancer)."
}

output "in_cluster_endpoint" {
  value = local.first_ip
}

output "api_server_cert_sans" {
  value = [for name in local.control_planes : constellation_local_node.node[name].ip]
}

output "ip_cidr_node" {
  value = var.bridge_cidr
}

output "nodes" {
  value = { for name, n in constellation_local_node.node : name => { ip = n.ip, role = n.role } }
}

output "component_url" {
  value       = constellation_local_network.this.component_url
  description = "Where nodes download the pinned components."
}

output "platform_ca" {
  value       = constellation_local_network.this.platform_ca_certificate
  description = "PEM certificate of the CA that certifies the nodes' vTPMs: attestation.platformCA in the configuration."
}

output "kms_endpoint" {
  value       = constellation_local_network.this.kms_endpoint
  description = "Endpoint of the local KMS (local_kms), http://<bridge address>:4599; empty without it."
}
