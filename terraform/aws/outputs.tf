output "cluster_endpoint" {
  value       = aws_lb.front.dns_name
  description = "DNS name of the network load balancer in front of the control planes."
}

output "in_cluster_endpoint" {
  value       = aws_lb.front.dns_name
  description = "The Kubernetes API endpoint the nodes use."
}

output "api_server_cert_sans" {
  value = sort(distinct(concat(
    [aws_lb.front.dns_name],
    [for name in local.control_planes : aws_instance.node[name].public_ip],
    [for name in local.control_planes : aws_instance.node[name].private_ip],
  )))
  description = "Names and addresses the API server certificate must be valid for."
}

output "ip_cidr_node" {
  value       = var.node_cidr
  description = "The node network (the VPC)."
}

output "nodes" {
  value       = { for name, i in aws_instance.node : name => { ip = i.public_ip, role = var.nodes[name].role } }
  description = "Nodes by name with their public address (the CLI reaches them there) and role."
}
