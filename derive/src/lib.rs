//! The `#[shmrpc::message]` attribute. Use it through `shmrpc`, which re-exports it as
//! `shmrpc::message`; its documentation is there.
//!
//! An attribute, not a derive: a derive macro can only add items beside a type, not other
//! derives on it, and the rkyv derives must see the type itself.
#![deny(missing_docs, missing_debug_implementations)]

use proc_macro::TokenStream;
use quote::quote;

/// Makes a struct or enum a shmrpc message: adds rkyv's `Archive`, `Serialize` and
/// `Deserialize` derives with `#[rkyv(crate = ::shmrpc::rkyv)]`.
///
/// Arguments, if any, are passed on to that `#[rkyv(..)]` attribute, for example
/// `#[shmrpc::message(derive(Debug), compare(PartialEq))]` derives `Debug` on the archived
/// type and lets it be compared with the native one.
#[proc_macro_attribute]
pub fn message(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let input = syn::parse_macro_input!(item as syn::DeriveInput);
    if let syn::Data::Union(u) = &input.data {
        return syn::Error::new(
            u.union_token.span,
            "#[shmrpc::message] applies to structs and enums (rkyv does not archive unions)",
        )
        .to_compile_error()
        .into();
    }
    let rkyv_args = if args.is_empty() {
        quote!(crate = ::shmrpc::rkyv)
    } else {
        quote!(crate = ::shmrpc::rkyv, #args)
    };
    quote! {
        #[derive(::shmrpc::rkyv::Archive, ::shmrpc::rkyv::Serialize, ::shmrpc::rkyv::Deserialize)]
        #[rkyv(#rkyv_args)]
        #input
    }
    .into()
}
