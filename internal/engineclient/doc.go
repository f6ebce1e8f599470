// Package engineclient holds what the etcd and Consul clients of the
// discovery sources, config loaders and storage modules share: endpoint
// checks whose errors name the config field the user wrote, telling
// whether the settings ask for TLS, and building the etcd v3 and Consul API
// client configurations.
package engineclient
