//! The `#[main]` attribute of `tokio-multiprocessing`, re-exported as
//! `tokio_multiprocessing::main`. Use it through that crate.

use proc_macro::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, LitInt, LitStr, Path};

/// What the attribute's arguments ask for.
struct Args {
    multi_thread: bool,
    worker_threads: Option<LitInt>,
    krate: Path,
}

impl Args {
    fn parse(args: TokenStream) -> syn::Result<Args> {
        let mut out = Args {
            multi_thread: true,
            worker_threads: None,
            krate: syn::parse_quote!(::tokio_multiprocessing),
        };
        let mut flavor_span = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("flavor") {
                let value: LitStr = meta.value()?.parse()?;
                out.multi_thread = match value.value().as_str() {
                    "multi_thread" => true,
                    "current_thread" => false,
                    other => {
                        return Err(syn::Error::new(
                            value.span(),
                            format!(
                                "unknown flavor `{other}`: expected \"multi_thread\" or \"current_thread\""
                            ),
                        ));
                    }
                };
                flavor_span = Some(value.span());
                Ok(())
            } else if meta.path.is_ident("worker_threads") {
                let value: LitInt = meta.value()?.parse()?;
                if value.base10_parse::<usize>()? == 0 {
                    return Err(syn::Error::new(
                        value.span(),
                        "worker_threads must be at least 1",
                    ));
                }
                out.worker_threads = Some(value);
                Ok(())
            } else if meta.path.is_ident("crate") {
                let value: LitStr = meta.value()?.parse()?;
                out.krate = value.parse()?;
                Ok(())
            } else {
                Err(meta.error("unknown argument: expected `flavor`, `worker_threads` or `crate`"))
            }
        });
        syn::parse::Parser::parse(parser, args)?;
        if let (false, Some(n)) = (out.multi_thread, &out.worker_threads) {
            let span = flavor_span.unwrap_or_else(|| n.span());
            return Err(syn::Error::new(
                span,
                "worker_threads applies to the multi_thread flavor only",
            ));
        }
        Ok(out)
    }
}

/// Marks `async fn main` of a program that starts child processes: the
/// generated `fn main` calls `tokio_multiprocessing::init()` first, before
/// any thread exists, then builds the Tokio runtime and runs the body on
/// it, then applies the exit rule to the children still running.
///
/// Arguments, as `#[tokio::main]`'s: `flavor = "multi_thread"` (the
/// default) or `"current_thread"`, `worker_threads = N`; and
/// `crate = "path"` when the crate is renamed.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    let func = match syn::parse::<ItemFn>(item) {
        Ok(func) => func,
        Err(e) => return with_error(item2, e),
    };
    let args = match Args::parse(args) {
        Ok(args) => args,
        Err(e) => return with_error(item2, e),
    };
    if func.sig.asyncness.is_none() {
        let e = syn::Error::new(
            func.sig.fn_token.span(),
            "#[tokio_multiprocessing::main] goes on `async fn main`",
        );
        return with_error(item2, e);
    }
    if !func.sig.inputs.is_empty() {
        let e = syn::Error::new(func.sig.inputs.span(), "`main` takes no arguments");
        return with_error(item2, e);
    }
    if !func.sig.generics.params.is_empty() {
        let e = syn::Error::new(func.sig.generics.span(), "`main` has no generics");
        return with_error(item2, e);
    }
    expand(func, &args).into()
}

fn expand(func: ItemFn, args: &Args) -> proc_macro2::TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let ident = &sig.ident;
    let output = &sig.output;
    let krate = &args.krate;
    let multi_thread = args.multi_thread;
    let worker_threads = match &args.worker_threads {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let span = block.span();
    let body = quote_spanned! {span=>
        async fn __tokio_multiprocessing_main() #output #block
    };
    quote! {
        #(#attrs)*
        #vis fn #ident() #output {
            // First: in a child (or the fork server), this runs the child's
            // work and never returns; here, no thread exists yet.
            let __init_guard = #krate::init();
            #body
            let __runtime = #krate::__private::build_runtime(#multi_thread, #worker_threads);
            let __output = __runtime.block_on(__tokio_multiprocessing_main());
            ::core::mem::drop(__runtime);
            // The exit rule: daemons terminated, the other children joined.
            ::core::mem::drop(__init_guard);
            __output
        }
    }
}

/// The item as it was, so that other errors stay readable, and the error.
fn with_error(item: proc_macro2::TokenStream, e: syn::Error) -> TokenStream {
    let e = e.to_compile_error();
    quote!(#item #e).into()
}
