//! lb-agent: loads the XDP load balancer, turns the config into BPF map contents and keeps
//! them current. See ARCHITECTURE.md for the bird's-eye view.
pub mod config;
pub mod maglev;
