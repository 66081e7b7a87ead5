//! The one integration-test binary (every test binary links libtorch, so there is only one).
mod best;
mod chat;
mod common;
mod config;
mod data;
mod devices;
mod experiment;
mod export;
mod faults;
mod hub;
mod hub_data;
mod layers;
mod model;
mod packing;
mod plan;
mod report;
mod train;
