//! The one integration-test binary (every test binary links libtorch, so there is only one).
mod common;
mod config;
mod data;
mod devices;
mod experiment;
mod export;
mod faults;
mod hub;
mod layers;
mod model;
mod plan;
mod report;
mod train;
